/* What guard.c (the guard) and rest.c (the supervisor at rest) share: common.c. */
#ifndef FSCACHE_GUARD_COMMON_H
#define FSCACHE_GUARD_COMMON_H
#include <stddef.h>
#include <sys/types.h>

#define FUSECTL "/sys/fs/fuse/connections"
#define PROBE_DEADLINE_MS 2000

/* R/usr, its two targets, and the view's mount point (absolute), set from the arguments. */
extern const char *link_path, *real_target, *view_target, *mount_point;
/* Who say() says it is ("fscache-guard", or the supervisor at rest). */
extern const char *speaker;
/* say() writes lines as the Node supervisor's logger does (rest.c), not the guard's plain ones. */
extern int say_as_node;

void say(const char *what);
void sleep_ms(long ms);
long now_ms(void);
/* Reads a whole small file into buf (NUL-terminated); -1 on error. */
long read_file(const char *file, char *buf, size_t size);
/* The fusectl connection of the topmost FUSE mount at mount_point, -1 if none; *fusectl_mounted set. */
long fuse_connection(int *fusectl_mounted);
/* R/usr back on the real tree, if it is on the view. 0 if it still points at the view (the switch failed). */
int link_to_real(void);
/* A child that looks `name` up (only the view can answer a name the kernel has not cached) and exits with the errno (255: it exists); -1 if none. */
pid_t fork_lookup(const char *name);
/* The view's connection aborted through fusectl (launches caught in a hang end), its mount detached. */
void abort_connection(void);
/* MESSAGE to systemd's NOTIFY_SOCKET on behalf of `sender` (see common.c); 0 when sent or not asked for. */
int notify_systemd(pid_t sender, const char *message);
#endif
