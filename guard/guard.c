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
 * Usage: fscache-guard LINK REAL_TARGET VIEW_TARGET MOUNT VIEW_STATE
 *        fscache-guard --notify MESSAGE   (see notify_for_parent below)
 *   LINK         R/usr (absolute)          REAL_TARGET  the link's target for the real tree
 *   VIEW_TARGET  the link's target for the view     MOUNT  the view's mount point (absolute)
 *   VIEW_STATE   the view's state file (its "pid" is killed at the end)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FUSECTL "/sys/fs/fuse/connections"
#define PROBE_DEADLINE_MS 2000
#define SETTLE_MS 3000 /* how long a responsive orphan view gets to detach by itself */

static const char *link_path, *real_target, *view_target, *mount_point, *view_state;

static void say(const char *what) {
  dprintf(2, "fscache-guard[%d]: %s\n", getpid(), what);
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
  }
}

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* Reads a whole small file into buf (NUL-terminated); -1 on error. */
static long read_file(const char *file, char *buf, size_t size) {
  int fd = open(file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  size_t got = 0;
  for (;;) {
    ssize_t n = read(fd, buf + got, size - 1 - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += (size_t)n;
    if (got == size - 1) break;
  }
  close(fd);
  buf[got] = 0;
  return (long)got;
}

/* mountinfo's octal escapes (\040 for a space) undone in place. */
static void unescape(char *s) {
  char *out = s;
  for (char *in = s; *in; in++) {
    if (in[0] == '\\' && in[1] >= '0' && in[1] <= '7' && in[2] >= '0' && in[2] <= '7' && in[3] >= '0' && in[3] <= '7') {
      *out++ = (char)((in[1] - '0') * 64 + (in[2] - '0') * 8 + (in[3] - '0'));
      in += 3;
    } else {
      *out++ = *in;
    }
  }
  *out = 0;
}

/* The fusectl connection of the topmost FUSE mount at mount_point, -1 if none; *fusectl_mounted set. */
static long fuse_connection(int *fusectl_mounted) {
  static char buf[1 << 20];
  long conn = -1;
  *fusectl_mounted = 0;
  if (read_file("/proc/self/mountinfo", buf, sizeof buf) < 0) return -1;
  char *save = NULL;
  for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    char *fields[6] = {0};
    char *f = line;
    for (int i = 0; i < 6 && f; i++) {
      fields[i] = f;
      f = strchr(f, ' ');
      if (f) *f++ = 0;
    }
    /* Optional fields (zero or more) end with a lone "-"; the file system type follows it. */
    char *fstype = !f ? NULL : strncmp(f, "- ", 2) == 0 ? f + 2 : strstr(f, " - ") ? strstr(f, " - ") + 3 : NULL;
    if (!fields[4] || !fstype) continue;
    char *end = strchr(fstype, ' ');
    if (end) *end = 0;
    unescape(fields[4]);
    if (strcmp(fields[4], FUSECTL) == 0 && strcmp(fstype, "fusectl") == 0) *fusectl_mounted = 1;
    if (strcmp(fields[4], mount_point) != 0) continue;
    if (strcmp(fstype, "fuse") != 0 && strncmp(fstype, "fuse.", 5) != 0) continue;
    char *colon = strchr(fields[2], ':');
    if (colon) conn = strtol(colon + 1, NULL, 10); /* the last one listed is on top */
  }
  return conn;
}

/*
 * Does the view's process answer? A child looks up a fresh name in the mount (only the view
 * can answer a name the kernel has not cached); the guard waits for it at most the deadline.
 * 1: answered, 0: no answer (hung) or a dead connection. A child still blocked is left to the
 * abort, which frees it.
 */
static int view_answers(unsigned n) {
  pid_t child = fork();
  if (child < 0) return 0;
  if (child == 0) {
    char name[PATH_MAX];
    struct stat st;
    snprintf(name, sizeof name, "%s/.fscache-guard-probe-%d-%u", mount_point, (int)getppid(), n);
    _exit(lstat(name, &st) == -1 && errno == ENOENT ? 0 : 1);
  }
  long deadline = now_ms() + PROBE_DEADLINE_MS;
  while (now_ms() < deadline) {
    int status;
    pid_t r = waitpid(child, &status, WNOHANG);
    if (r == child) return WIFEXITED(status) && WEXITSTATUS(status) == 0;
    sleep_ms(20);
  }
  return 0;
}

/* R/usr back on the real tree, if it is on the view: a new link renamed over it, then the directory synced. */
static void link_to_real(void) {
  char target[PATH_MAX];
  ssize_t n = readlink(link_path, target, sizeof target - 1);
  if (n < 0) return;
  target[n] = 0;
  if (strcmp(target, view_target) != 0) return; /* stop, pause or the view already moved it */
  char pending[PATH_MAX];
  snprintf(pending, sizeof pending, "%s.fscache-new", link_path);
  unlink(pending);
  if (symlink(real_target, pending) != 0 || rename(pending, link_path) != 0) {
    say("could not switch the link to the real tree");
    unlink(pending);
    return;
  }
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", link_path);
  char *slash = strrchr(dir, '/');
  if (slash) *(slash == dir ? slash + 1 : slash) = 0;
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd); /* the switch survives a power cut */
    close(dfd);
  }
  say("the link is back on the real tree");
}

static void abort_connection(void) {
  int fusectl_mounted;
  long conn = fuse_connection(&fusectl_mounted);
  if (conn < 0) return;
  if (!fusectl_mounted) mount("fusectl", FUSECTL, "fusectl", 0, NULL);
  char file[128];
  snprintf(file, sizeof file, FUSECTL "/%ld/abort", conn);
  int fd = open(file, O_WRONLY | O_CLOEXEC);
  if (fd >= 0) {
    if (write(fd, "1", 1) == 1) say("the view's connection is aborted");
    close(fd);
  }
  umount2(mount_point, MNT_DETACH);
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

/*
 * --notify MESSAGE: sends MESSAGE ("READY=1", "STATUS=...") to systemd's $NOTIFY_SOCKET for
 * the parent, the supervisor, which is the service's main process and cannot send a
 * datagram from Node. The credentials name the parent's pid (root may), so the unit keeps
 * NotifyAccess=main and systemd attributes the message to a process that still lives.
 * Without the privilege the message goes out under our own pid (NotifyAccess=all would take it).
 */
static int notify_for_parent(const char *message) {
  const char *socket_path = getenv("NOTIFY_SOCKET");
  if (!socket_path || !*socket_path) return 0; /* not run by systemd with Type=notify */
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  size_t len = strlen(socket_path);
  if ((socket_path[0] != '/' && socket_path[0] != '@') || len >= sizeof sa.sun_path) {
    say("NOTIFY_SOCKET is not a unix socket address");
    return 1;
  }
  memcpy(sa.sun_path, socket_path, len);
  if (sa.sun_path[0] == '@') sa.sun_path[0] = 0; /* the abstract namespace */
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 1;
  struct iovec iov = {.iov_base = (void *)message, .iov_len = strlen(message)};
  union {
    struct cmsghdr header;
    char space[CMSG_SPACE(sizeof(struct ucred))];
  } control;
  memset(&control, 0, sizeof control);
  struct msghdr mh = {.msg_name = &sa, .msg_namelen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len),
                      .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space, .msg_controllen = sizeof control.space};
  struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_CREDENTIALS;
  c->cmsg_len = CMSG_LEN(sizeof(struct ucred));
  struct ucred cred = {.pid = getppid(), .uid = getuid(), .gid = getgid()};
  memcpy(CMSG_DATA(c), &cred, sizeof cred);
  ssize_t sent = sendmsg(fd, &mh, MSG_NOSIGNAL);
  if (sent < 0 && errno == EPERM) {
    mh.msg_control = NULL, mh.msg_controllen = 0;
    sent = sendmsg(fd, &mh, MSG_NOSIGNAL);
  }
  if (sent < 0) say("the message to NOTIFY_SOCKET was not sent");
  close(fd);
  return sent < 0 ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--notify") == 0) return notify_for_parent(argv[2]);
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
