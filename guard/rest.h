/* The supervisor at rest (rest.c): fscache-guard --rest ARGS; argv[0] is "--rest". */
#ifndef FSCACHE_GUARD_REST_H
#define FSCACHE_GUARD_REST_H
int rest_main(int argc, char **argv);
#endif
