/*
 * fscache-guard: the last resort when the supervisor is gone and its view hangs.
 *
 * The supervisor (a Node process) starts this small static program beside itself. While the
 * supervisor lives, the guard only waits. When the supervisor dies (kill -9, OOM), the view
 * it left notices by itself and puts R/usr back on the real tree, unless the view is hung
 * (stopped, deadlocked): then nothing would, and every launch under /usr would hang. The
 * guard then probes the view through its mount with a deadline, and if it gets no answer it
 * does what the supervisor would have done: R/usr back to the real tree (a new link renamed
 * over the old one, directory fsynced), the FUSE connection aborted through fusectl (so that
 * launches caught in the hang end), the mount detached, the view killed. Then it exits.
 *
 * Why C, static: it must not depend on anything the hung view serves. A dynamically linked
 * program (node included) loads its loader and libraries through R/usr; this one loads
 * nothing after its exec, which the supervisor makes from the real tree. Cost: ~800 KiB of
 * file, about 0.7 MiB resident (bench/supervisor.js --memory-only), one wake-up every 250 ms.
 *
 * Never touches the mount point by name except through the forked probe (a stat of a hung
 * mount blocks for good; the child may block, the guard never does). The connection is
 * found from /proc/self/mountinfo.
 *
 * The same program is also the supervisor at rest (--rest, rest.c): the Node supervisor
 * execs it in its own process once the view has served quietly for a while.
 *
 * Usage: fscache-guard LINK REAL_TARGET VIEW_TARGET MOUNT VIEW_STATE
 *        fscache-guard --notify MESSAGE   (systemd, for the parent: common.c)
 *        fscache-guard --rest ...         (rest.c)
 *   LINK         R/usr (absolute)          REAL_TARGET  the link's target for the real tree
 *   VIEW_TARGET  the link's target for the view     MOUNT  the view's mount point (absolute)
 *   VIEW_STATE   the view's state file (its "pid" is killed at the end)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "common.h"
#include "rest.h"

#define SETTLE_MS 3000 /* how long a responsive orphan view gets to detach by itself */

static const char *view_state;

/*
 * Does the view's process answer? A child looks up a fresh name in the mount (only the view
 * can answer a name the kernel has not cached); the guard waits for it at most the deadline.
 * 1: answered, 0: no answer (hung) or a dead connection. A child still blocked is left to the
 * abort, which frees it.
 */
static int view_answers(unsigned n) {
  char name[PATH_MAX];
  snprintf(name, sizeof name, "%s/.fscache-guard-probe-%d-%u", mount_point, (int)getpid(), n);
  pid_t child = fork_lookup(name);
  if (child < 0) return 0;
  long deadline = now_ms() + PROBE_DEADLINE_MS;
  while (now_ms() < deadline) {
    int status;
    pid_t r = waitpid(child, &status, WNOHANG);
    if (r == child) return WIFEXITED(status) && WEXITSTATUS(status) == ENOENT;
    sleep_ms(20);
  }
  return 0;
}

/* The view's pid from its state file ("pid": N), 0 if unknown. */
static pid_t view_pid(void) {
  char buf[8192];
  if (read_file(view_state, buf, sizeof buf) < 0) return 0;
  char *p = strstr(buf, "\"pid\"");
  if (!p || !(p = strchr(p, ':'))) return 0;
  long pid = strtol(p + 1, NULL, 10);
  return pid > 1 ? (pid_t)pid : 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--notify") == 0) return notify_systemd(getppid(), argv[2]);
  if (argc > 1 && strcmp(argv[1], "--rest") == 0) return rest_main(argc - 1, argv + 1);
  if (argc != 6) {
    dprintf(2, "usage: fscache-guard LINK REAL_TARGET VIEW_TARGET MOUNT VIEW_STATE\n");
    return 2;
  }
  link_path = argv[1], real_target = argv[2], view_target = argv[3], mount_point = argv[4], view_state = argv[5];
  pid_t supervisor = getppid();
  signal(SIGPIPE, SIG_IGN);
  /* While the supervisor lives it does everything; it ends us with SIGTERM when it stops. */
  while (getppid() == supervisor) sleep_ms(250);
  say("the supervisor is gone");
  int fusectl_mounted;
  /* The view it left; a different connection at the mount point later is a new supervisor's view: not ours. */
  long ours = fuse_connection(&fusectl_mounted);
  if (ours < 0) {
    say("no view is mounted: nothing to do");
    return 0;
  }
  long settle_until = now_ms() + SETTLE_MS;
  for (unsigned n = 0;; n++) {
    if (fuse_connection(&fusectl_mounted) != ours) return 0; /* detached (the orphan view did its job), or replaced */
    if (!view_answers(n)) break;
    if (now_ms() > settle_until) {
      /* Answers, yet stays mounted without a supervisor: detach it as stop does; it serves its last users. */
      say("the view answers but did not detach by itself: detaching it");
      if (fuse_connection(&fusectl_mounted) != ours) return 0;
      link_to_real();
      umount2(mount_point, MNT_DETACH);
      return 0;
    }
    sleep_ms(250);
  }
  if (fuse_connection(&fusectl_mounted) != ours) return 0;
  say("the view does not answer without its supervisor: ending it");
  link_to_real();
  abort_connection();
  pid_t pid = view_pid();
  if (pid) kill(pid, SIGKILL);
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
  return 0;
}
