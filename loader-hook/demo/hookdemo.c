/* The program of `fscache demo`'s hook part: prints a checksum computed by libfscachedemo.so and
   the offset of each of its functions from the library's base ("fn <name> <hex>"). With an
   argument it then holds its mappings until its standard input closes. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>

unsigned demo_mix(unsigned, unsigned), demo_rotate(unsigned, unsigned), demo_square(unsigned), demo_byte(const char *, int),
    demo_round(unsigned, unsigned), demo_fold(const char *), demo_finish(unsigned), demo_checksum(const char *);

int main(int argc, char **argv) {
  (void)argv;
  printf("checksum %u\n", demo_checksum("one shared randomized image per library per epoch"));
  const struct { const char *name; void *fn; } fns[] = {
    {"mix", (void *)demo_mix}, {"rotate", (void *)demo_rotate}, {"square", (void *)demo_square}, {"byte", (void *)demo_byte},
    {"round", (void *)demo_round}, {"fold", (void *)demo_fold}, {"finish", (void *)demo_finish}, {"checksum", (void *)demo_checksum},
  };
  for (unsigned i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    Dl_info info;
    if (!dladdr(fns[i].fn, &info)) return 2;
    printf("fn %s %lx\n", fns[i].name, (unsigned long)((char *)fns[i].fn - (char *)info.dli_fbase));
  }
  printf("ready\n");
  fflush(stdout);
  char c;
  if (argc > 1) while (read(0, &c, 1) > 0) continue;
  return 0;
}
