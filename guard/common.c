/*
 * What the two roles of fscache-guard share (guard.c: the last resort when the supervisor is
 * gone; rest.c: the supervisor at rest): the link, the view's FUSE connection, systemd.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "common.h"

const char *link_path, *real_target, *view_target, *mount_point;
const char *speaker = "fscache-guard";

int say_as_node;

void say(const char *what) {
  if (!say_as_node) {
    dprintf(2, "%s[%d]: %s\n", speaker, getpid(), what);
    return;
  }
  /* The supervisor's own lines, as core/log.ts writes them: a priority for the journal, else a UTC timestamp. */
  const char *journal = getenv("JOURNAL_STREAM");
  struct stat st;
  char id[64];
  if (journal && fstat(2, &st) == 0 && snprintf(id, sizeof id, "%lu:%lu", (unsigned long)st.st_dev, (unsigned long)st.st_ino) > 0 && strcmp(id, journal) == 0) {
    dprintf(2, "<6>%s[%d]: %s\n", speaker, getpid(), what);
    return;
  }
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  dprintf(2, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s[%d] info: %s\n", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
          tm.tm_sec, ts.tv_nsec / 1000000L, speaker, getpid(), what);
}

void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
  }
}

long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* Reads a whole small file into buf (NUL-terminated); -1 on error. */
long read_file(const char *file, char *buf, size_t size) {
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
void unescape(char *s) {
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
long fuse_connection(int *fusectl_mounted) {
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

/* R/usr back on the real tree, if it is on the view: a new link renamed over it, then the directory synced. */
int link_to_real(void) {
  char target[PATH_MAX];
  ssize_t n = readlink(link_path, target, sizeof target - 1);
  if (n < 0) return 1;
  target[n] = 0;
  if (strcmp(target, view_target) != 0) return 1; /* stop, pause or the view already moved it */
  char pending[PATH_MAX];
  snprintf(pending, sizeof pending, "%s.fscache-new", link_path);
  unlink(pending);
  if (symlink(real_target, pending) != 0 || rename(pending, link_path) != 0) {
    say("could not switch the link to the real tree");
    unlink(pending);
    return 0;
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
  return 1;
}

pid_t fork_lookup(const char *name) {
  pid_t child = fork();
  if (child == 0) {
    struct stat st;
    _exit(lstat(name, &st) == 0 ? 255 : errno & 0xff);
  }
  return child;
}

void abort_connection(void) {
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

/*
 * Sends MESSAGE ("READY=1", "STATUS=...") to systemd's $NOTIFY_SOCKET for `sender`, the
 * supervisor, which is the service's main process and cannot send a datagram from Node
 * (--notify: the guard's parent; at rest: this process itself). The credentials name that pid
 * (root may), so the unit keeps NotifyAccess=main and systemd attributes the message to a
 * process that still lives. Without the privilege the message goes out under our own pid.
 */
int notify_systemd(pid_t sender, const char *message) {
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
  struct ucred cred = {.pid = sender, .uid = getuid(), .gid = getgid()};
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

