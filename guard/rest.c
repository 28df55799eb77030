/*
 * fscache-guard --rest: the supervisor at rest (issue 16: fscache's own footprint).
 *
 * A Node supervisor costs ~50 MiB resident for a job that, while the view serves quietly, is
 * one probe a second. So once the view has served a while with nothing to do
 * (supervisor_rest_seconds), the Node supervisor execs this program in its own process:
 * same pid (the init system's main process, the view's parent, the pid the view signals),
 * same children, ~0.7 MiB. It keeps what must not wait:
 *   - the view's exit, seen at once (SIGCHLD): R/usr back to the real tree;
 *   - one probe a second through the mount (a fresh name, ENOENT expected, 2 s deadline) in
 *     a forked child: a hang, a dead connection or a wrong answer puts R/usr back at once;
 *     a good one refreshes lastGoodProbeAt in supervisor.json (what `status` reads);
 *   - SIGTERM/SIGINT/SIGHUP: stop, as the Node supervisor stops (R/usr back, the view told
 *     to detach, aborted if it has not within 5 s, the state file removed, the guard ended);
 *   - the view's log (its stderr pipe), forwarded to ours, and our log file kept under 1 MiB as
 *     core/log.ts keepLogBounded does (copy to LOG.1, truncate).
 * Everything else wakes the Node supervisor again, by exec of the command line it left, with
 * what happened in FSCACHE_SUPERVISOR_WAKE (fs/service/rest.ts): a failure of the view (it
 * restarts it with back-off), a renewal or the daemon asked for by the view (SIGUSR2,
 * SIGURG), a pause file, a daemon that died.
 *
 * Before that exec R/usr goes to the real tree: node's loader and libraries come through
 * R/usr, and no fscache process resolves a path through the view (a hung one would hang the
 * exec). The Node supervisor switches it back after a good probe. If the exec fails, R/usr
 * stays on the real tree, the view is stopped, and this process exits 1 (fail open; the init
 * system may restart the service).
 *
 * Signals that came just before the exec are taken here and named in the wake (node unblocks
 * every signal at its start: one still pending would meet its default action there). One that
 * arrives while node starts, before it has its handlers, has its default action: SIGTERM or
 * SIGUSR2 then end the supervisor, and the view's own watch and the guard do what they do when
 * the supervisor dies (R/usr back, the view detached). The window is node's start (~150 ms
 * measured; cli/main.ts takes the signals first: core/held-signals.ts). The view's own requests
 * wait until the supervisor catches them (fs/service/orphan-watch.ts sendWhenCaught).
 *
 * Usage: fscache-guard --rest LINK REAL_TARGET VIEW_TARGET MOUNT STATE_FILE PAUSE_FILE
 *            DAEMON_PID_FILE LOG_FILE VIEW_PID GUARD_PID LOG_FD MEMO -- NODE ARGS...
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "common.h"
#include "rest.h"

#define PROBE_INTERVAL_MS 1000
#define DETACH_GRACE_MS 5000
#define WAKE_ENV "FSCACHE_SUPERVISOR_WAKE"
#define LOG_MAX_BYTES (1024 * 1024) /* core/log.ts LOG_MAX_BYTES */
#define LOG_CHECK_MS 10000

extern char **environ;

static const char *state_file, *pause_file, *daemon_pid_file, *log_file, *memo;
static pid_t view, guard;
static int log_fd = -1;
static char **node_argv;
static volatile sig_atomic_t signalled; /* a bit per signal taken (1 << signo), none lost when several come at once */
static sigset_t ours; /* blocked outside ppoll */
static int view_status = -1; /* wait status once the view is reaped */
static pid_t probe_pid;
static int probe_status = -1;

static void on_signal(int sig) {
  if (sig != SIGCHLD) signalled |= 1 << sig; /* SIGCHLD only interrupts the wait */
}

static const char *signal_name(int sig) {
  return sig == SIGTERM ? "SIGTERM" : sig == SIGINT ? "SIGINT" : sig == SIGHUP ? "SIGHUP" : sig == SIGUSR2 ? "SIGUSR2" : sig == SIGURG ? "SIGURG" : NULL;
}

static void forward_log(void) {
  char buf[16384];
  ssize_t n = read(log_fd, buf, sizeof buf);
  if (n > 0) {
    ssize_t off = 0;
    while (off < n) {
      ssize_t w = write(2, buf + off, (size_t)(n - off));
      if (w <= 0) break;
      off += w;
    }
  } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
    close(log_fd); /* the view closed its end */
    log_fd = -1;
  }
}

/* Our stderr, if it is the file log, copied to LOG.1 and emptied beyond the cap (everyone holds it O_APPEND). */
static void keep_log_bounded(void) {
  struct stat fd_st, named;
  if (fstat(2, &fd_st) != 0 || stat(log_file, &named) != 0) return;
  if (fd_st.st_dev != named.st_dev || fd_st.st_ino != named.st_ino || fd_st.st_size <= LOG_MAX_BYTES) return;
  char old[PATH_MAX];
  snprintf(old, sizeof old, "%s.1", log_file);
  int in = open(log_file, O_RDONLY | O_CLOEXEC), out = open(old, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, named.st_mode & 0777);
  char buf[65536];
  ssize_t n = 0;
  while (in >= 0 && out >= 0 && (n = read(in, buf, sizeof buf)) > 0)
    if (write(out, buf, (size_t)n) != n) break;
  if (in >= 0 && out >= 0 && n == 0) ftruncate(2, 0);
  if (in >= 0) close(in);
  if (out >= 0) close(out);
}

static void reap_children(void) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    if (pid == view) view_status = status;
    else if (pid == probe_pid) probe_status = status;
    else if (pid == guard) guard = 0;
  }
}

/* The live children of this process (view, guard, daemon, a probe still blocked), comma-separated. */
static void list_children(char *out, size_t size) {
  size_t used = 0;
  out[0] = 0;
  DIR *proc = opendir("/proc");
  if (!proc) return;
  for (struct dirent *e; (e = readdir(proc));) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
    char file[300], buf[512];
    snprintf(file, sizeof file, "/proc/%s/stat", e->d_name);
    if (read_file(file, buf, sizeof buf) < 0) continue;
    char *close_paren = strrchr(buf, ')'); /* the name may hold anything but ends at the last ')' */
    int ppid;
    if (!close_paren || sscanf(close_paren + 1, " %*c %d", &ppid) != 1 || ppid != getpid()) continue;
    int n = snprintf(out + used, size - used, "%s%s", used ? "," : "", e->d_name);
    if (n < 0 || (size_t)n >= size - used) break;
    used += (size_t)n;
  }
  closedir(proc);
}

/* lastGoodProbeAt in supervisor.json set to now (wall clock, ms), the rest of the file as the Node supervisor wrote it. */
static void note_good_probe(void) {
  static char buf[65536];
  static const char key[] = "\"lastGoodProbeAt\": ";
  if (read_file(state_file, buf, sizeof buf) < 0) return;
  char *at = strstr(buf, key);
  if (!at) return;
  char *value = at + sizeof key - 1, *end = value;
  while ((*end >= '0' && *end <= '9') || (*end >= 'a' && *end <= 'z')) end++; /* a number or null */
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  char tmp[PATH_MAX];
  snprintf(tmp, sizeof tmp, "%s.rest", state_file);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return;
  int ok = dprintf(fd, "%.*s%lld%s", (int)(value - buf), buf, (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, end) > 0;
  close(fd);
  if (!ok || rename(tmp, state_file) != 0) unlink(tmp);
}

/*
 * A child looks up a fresh name in the mount (fork_lookup). Fresh across rests too (the time
 * this one began): a name the kernel remembers as missing would be answered without the view.
 */
static void start_probe(void) {
  static unsigned count;
  static long long began;
  if (!began) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    began = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  }
  char name[PATH_MAX];
  snprintf(name, sizeof name, "%s/.fscache-probe-%d-r%lld-%u", mount_point, (int)getpid(), began, count);
  probe_status = -1;
  probe_pid = fork_lookup(name);
  if (probe_pid < 0) probe_pid = 0;
  count++;
}

/* Whether the daemon's pid file names a process that is gone (not "idle": that one comes back on demand). */
static int daemon_died(void) {
  char buf[64];
  if (read_file(daemon_pid_file, buf, sizeof buf) < 0) return 0;
  char *end;
  long pid = strtol(buf, &end, 10);
  if (end == buf || pid <= 1) return 0;
  return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

/* R/usr back, the view told to detach; aborted and killed if it has not detached within the grace. */
static void stop_view(void) {
  int fusectl_mounted;
  link_to_real();
  if (view > 0 && view_status < 0) kill(view, SIGTERM);
  long deadline = now_ms() + DETACH_GRACE_MS;
  while (fuse_connection(&fusectl_mounted) >= 0 && now_ms() < deadline) {
    if (log_fd >= 0) {
      struct pollfd pfd = {.fd = log_fd, .events = POLLIN};
      if (poll(&pfd, 1, 50) > 0) forward_log();
    } else {
      sleep_ms(50);
    }
  }
  if (fuse_connection(&fusectl_mounted) >= 0) {
    /* It did not detach: hung. A hung view serves nobody; end it so nothing waits on it. */
    abort_connection();
    if (view > 0) kill(view, SIGKILL);
    say("the view did not detach within 5000 ms: aborted, killed");
  }
}

static int stop(int sig) {
  char line[PATH_MAX + 128];
  snprintf(line, sizeof line, "%s: switching %s to the real tree and detaching the view", strsignal(sig), link_path);
  say(line);
  notify_systemd(getpid(), "STOPPING=1");
  stop_view();
  unlink(state_file);
  if (guard > 0) kill(guard, SIGTERM); /* a stop, not a death: nothing for it to do */
  return 0;
}

/*
 * The signals taken but not acted on (`signalled`) and those pending now, taken too, as node
 * names them ("SIGURG,SIGTERM"): the woken supervisor handles them as if they came then.
 */
static void take_signals(char *out, size_t size) {
  struct timespec zero = {0, 0};
  int sig, taken = signalled;
  while ((sig = sigtimedwait(&ours, NULL, &zero)) > 0) taken |= 1 << sig;
  signalled = 0;
  out[0] = 0;
  for (sig = 1; sig < 32; sig++) {
    const char *name = signal_name(sig);
    if (!(taken & (1 << sig)) || !name || strlen(out) + strlen(name) + 2 >= size) continue;
    if (*out) strcat(out, ",");
    strcat(out, name);
  }
}

/* The Node supervisor again, told what happened; never returns. */
static void wake(const char *event, const char *detail) {
  char children[4096];
  list_children(children, sizeof children);
  char clean[1024];
  snprintf(clean, sizeof clean, "%s", detail);
  for (char *c = clean; *c; c++)
    if (*c == '\n') *c = ' ';
  /* node loads through R/usr: on the real tree, never through the view (see the top). */
  if (!link_to_real()) {
    say("the link could not be switched to the real tree: node is not started through the view; stopping it");
    stop_view();
    exit(1);
  }
  /* Last, so that a signal that came during the switch is named too (see the top). */
  char *wake_var = NULL, taken[64];
  take_signals(taken, sizeof taken);
  if (asprintf(&wake_var, WAKE_ENV "=event=%s\ndetail=%s\nstatus=%d\nview=%d\nguard=%d\nlogfd=%d\nchildren=%s\nsignals=%s\nmemo=%s",
               event, clean, view_status, (int)view, (int)guard, log_fd, children, taken, memo) < 0) wake_var = NULL;
  size_t n = 0;
  while (environ[n]) n++;
  char **env = calloc(n + 2, sizeof *env);
  if (env && wake_var) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
      if (strncmp(environ[i], WAKE_ENV "=", sizeof WAKE_ENV) != 0) env[k++] = environ[i];
    env[k++] = wake_var;
    env[k] = NULL;
    execve(node_argv[0], node_argv, env);
  }
  char line[PATH_MAX + 128];
  snprintf(line, sizeof line, "the supervisor cannot run %s again (%s): stopping the view, %s stays on the real tree", node_argv[0], strerror(errno), link_path);
  say(line);
  stop_view();
  exit(1);
}

int rest_main(int argc, char **argv) {
  if (argc < 15 || strcmp(argv[13], "--") != 0) {
    dprintf(2, "usage: fscache-guard --rest LINK REAL_TARGET VIEW_TARGET MOUNT STATE_FILE PAUSE_FILE DAEMON_PID_FILE LOG_FILE VIEW_PID GUARD_PID LOG_FD MEMO -- NODE ARGS...\n");
    return 2;
  }
  link_path = argv[1], real_target = argv[2], view_target = argv[3], mount_point = argv[4];
  state_file = argv[5], pause_file = argv[6], daemon_pid_file = argv[7], log_file = argv[8];
  view = (pid_t)atoi(argv[9]), guard = (pid_t)atoi(argv[10]), log_fd = atoi(argv[11]), memo = argv[12];
  node_argv = argv + 14;
  speaker = "fscache";
  say_as_node = 1;
  /* Whatever exec'd us without them: our first open must not become our stderr (or a log line lands in a state file). */
  for (int fd = 0; fd < 3; fd++)
    if (fcntl(fd, F_GETFD) < 0) open("/dev/null", fd ? O_WRONLY : O_RDONLY);
  if (view <= 1) {
    say("--rest needs the view's pid");
    return 2;
  }

  /* Our signals are taken only inside ppoll: between two waits they stay pending, never lost. */
  int taken[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR2, SIGURG};
  sigset_t waitmask;
  sigemptyset(&ours);
  struct sigaction sa = {.sa_handler = on_signal};
  sigemptyset(&sa.sa_mask);
  for (size_t i = 0; i < sizeof taken / sizeof taken[0]; i++) {
    sigaddset(&ours, taken[i]);
    sigaction(taken[i], &sa, NULL);
  }
  sigprocmask(SIG_BLOCK, &ours, &waitmask);
  for (size_t i = 0; i < sizeof taken / sizeof taken[0]; i++) sigdelset(&waitmask, taken[i]);
  signal(SIGPIPE, SIG_IGN);

  long next_probe = now_ms() + PROBE_INTERVAL_MS, next_log_check = 0;
  long probe_started = 0;
  for (;;) {
    struct pollfd pfd = {.fd = log_fd, .events = POLLIN};
    struct timespec tick = {0, 100 * 1000000L};
    if (ppoll(&pfd, log_fd >= 0 ? 1 : 0, &tick, &waitmask) > 0 && pfd.revents) forward_log();
    reap_children();
    /* A stop first, whatever else came with it; then the view's exit; the others are named in the wake. */
    for (int sig = 1; sig < 32; sig++)
      if ((signalled & (1 << sig)) && sig != SIGUSR2 && sig != SIGURG) return stop(sig);
    if (view_status >= 0) {
      link_to_real(); /* first the link: launches must not resolve through a dead view */
      wake("exit", "");
    }
    if (signalled) {
      int renew = signalled & (1 << SIGUSR2);
      signalled &= ~(1 << (renew ? SIGUSR2 : SIGURG));
      wake(renew ? "renew" : "daemon", "");
    }
    long now = now_ms();
    if (probe_pid && probe_status >= 0) {
      int err = WIFEXITED(probe_status) ? WEXITSTATUS(probe_status) : -1;
      probe_pid = 0;
      if (err == ENOENT) {
        note_good_probe();
      } else if (err == ENOTCONN || err == ECONNABORTED) {
        link_to_real();
        wake("dead-connection", err == ENOTCONN ? "the mount answers ENOTCONN" : "the mount answers ECONNABORTED");
      } else {
        char detail[PATH_MAX + 64];
        snprintf(detail, sizeof detail, "a probe of %s gave %s, not ENOENT", mount_point, err == 255 ? "EEXIST" : err < 0 ? "a crash" : strerrorname_np(err));
        link_to_real();
        wake("error", detail);
      }
    } else if (probe_pid && now - probe_started > PROBE_DEADLINE_MS) {
      link_to_real(); /* the Node supervisor aborts and ends the view; new launches use the real tree now */
      wake("hang", "no answer to a probe within 2000 ms");
    }
    if (now >= next_log_check) {
      keep_log_bounded();
      next_log_check = now + LOG_CHECK_MS;
    }
    if (!probe_pid && now >= next_probe) {
      struct stat st;
      /* Only what fs/switch/pause.ts takes for a pause (a regular file of root's), or every check would wake it. */
      if (lstat(pause_file, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == 0) wake("pause", "");
      if (daemon_died()) wake("daemon-gone", "");
      start_probe();
      probe_started = now;
      next_probe = now + PROBE_INTERVAL_MS;
    }
  }
}
