/*
 * fscache_native: the system calls fscache needs that Node's fs does not offer.
 *
 * Why native code: Node's fs has no xattr call, and running getfattr instead deadlocked
 * a view installed inside the /usr it serves (issue 13, measured): an exec's GETXATTR of
 * security.capability made the view exec getfattr, which is found and loaded through
 * PATH = /usr = the view, whose main thread was waiting for that exec. A system call on
 * the real tree, made in the view's own process, never goes through the view.
 * Node's fs has no openat either: every call takes a path resolved from / (or the cwd),
 * and a directory of the real tree swapped for a symlink redirects it anywhere (issue 14,
 * finding 2). The view resolves the real tree beneath one descriptor of its root instead
 * (fs/view/real-tree.ts), with the calls below; fstat, read and close of a descriptor are Node's.
 *
 * Calls, synchronous (each is a few microseconds on the real tree):
 *   openat2(dirfd, path, flags, resolve) -> fd   openat2(2) (Linux >= 5.6): `resolve` holds
 *       RESOLVE_* bits (struct open_how); O_CLOEXEC is always added. A descriptor is an int.
 *   readlinkat(fd, path)  -> string              readlinkat(2); path "" reads the symlink that
 *       fd itself is (opened O_PATH | O_NOFOLLOW).
 *   fgetxattr(fd, name)   -> Buffer | undefined  undefined: no such attribute (ENODATA)
 *   flistxattr(fd)        -> string[]
 *       Of the object fd is open on, also a symlink opened O_PATH | O_NOFOLLOW: fgetxattr(2)
 *       refuses O_PATH descriptors (EBADF, measured on 6.18), so these call getxattr(2) on
 *       /proc/self/fd/N, a magic link the kernel resolves to exactly that open object (never
 *       by name, so nothing in the tree can redirect it; measured: a symlink's own trusted.*
 *       attributes are read, not its target's).
 *   peerUid(fd)           -> uid                getsockopt(SO_PEERCRED) of a connected unix socket:
 *       who is asking the hook daemon, as the kernel recorded it (Node has no such call), so
 *       that one user's connections can be capped without trusting what the client says.
 *   execve(file, argv, env)                  execve(2), for the supervisor's rest (fs/service/rest.ts):
 *       Node has no exec that keeps the pid, and the pid is what the init system, the view and
 *       the guard know the supervisor by. Returns only by throwing. SIGTERM, SIGINT, SIGHUP,
 *       SIGUSR2 and SIGURG are blocked first: one that comes meanwhile is the new program's.
 *   waitpid(pid)          -> undefined | { code, signal }   waitpid(2) with WNOHANG, for children
 *       this process has but libuv did not spawn (the view kept across a rest); undefined while it runs.
 *   setCloexec(fd, on)                       fcntl(F_SETFD): a descriptor kept across that exec.
 *   constants             { O_PATH, O_DIRECTORY, O_NOFOLLOW, RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS,
 *                           RESOLVE_NO_MAGICLINKS, AT_FDCWD }: from the system headers, per architecture.
 * A failure throws what Node's fs throws: an Error with code (the errno name, e.g. 'ENOENT'),
 * errno (negative), syscall and path. Built by node-gyp (binding.gyp) in `npm run build`.
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <signal.h>
#include <pthread.h>
#include <sys/xattr.h>
#include <unistd.h>

/* A value can grow between the size probe and the read (ERANGE): read again, a few times. */
#define TRIES 8

/* Throws what Node's fs throws for a failed system call. */
static napi_value throw_errno(napi_env env, int err, const char *syscall, const char *path) {
  const char *name = strerrorname_np(err);
  char msg[512];
  snprintf(msg, sizeof msg, "%s: %s, %s '%s'", name ? name : "UNKNOWN", strerror(err), syscall, path);
  napi_value code, message, error, n, call, where;
  napi_create_string_utf8(env, name ? name : "UNKNOWN", NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message);
  napi_create_error(env, code, message, &error);
  napi_create_int32(env, -err, &n);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &call);
  napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &where);
  napi_set_named_property(env, error, "errno", n);
  napi_set_named_property(env, error, "syscall", call);
  napi_set_named_property(env, error, "path", where);
  napi_throw(env, error);
  return NULL;
}

/* Argument i as a malloc'd C string; NULL (with a TypeError thrown) when it is none. */
static char *string_arg(napi_env env, napi_callback_info info, size_t i) {
  napi_value args[4];
  size_t argc = 4, len;
  char *s;
  napi_get_cb_info(env, info, &argc, args, NULL, NULL);
  if (i >= argc || napi_get_value_string_utf8(env, args[i], NULL, 0, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "expected a string argument");
    return NULL;
  }
  if (!(s = malloc(len + 1))) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  napi_get_value_string_utf8(env, args[i], s, len + 1, &len);
  /* A NUL inside would silently name another file. */
  if (strlen(s) != len) {
    free(s);
    napi_throw_type_error(env, NULL, "string argument contains a NUL byte");
    return NULL;
  }
  return s;
}

/* Argument i as an int32 in *out; false (with a TypeError thrown) when it is none. */
static int int_arg(napi_env env, napi_callback_info info, size_t i, int32_t *out) {
  napi_value args[4];
  size_t argc = 4;
  napi_get_cb_info(env, info, &argc, args, NULL, NULL);
  if (i >= argc || napi_get_value_int32(env, args[i], out) != napi_ok) {
    napi_throw_type_error(env, NULL, "expected an integer argument");
    return 0;
  }
  return 1;
}

/* getxattr of `name`, or listxattr when name is NULL: one size-probing loop serves both. */
static ssize_t xattr_call(const char *path, const char *name, char *buf, size_t size) {
  return name ? getxattr(path, name, buf, size) : listxattr(path, buf, size);
}

/*
 * The whole answer: a size probe, then the read, again on ERANGE (it grew in between).
 * Returns its length with *out malloc'd, or -1 with errno set.
 */
static ssize_t read_all(const char *path, const char *name, char **out) {
  for (int i = 0; i < TRIES; i++) {
    ssize_t size = xattr_call(path, name, NULL, 0);
    if (size < 0) return -1;
    char *buf = malloc(size ? size : 1);
    if (!buf) {
      errno = ENOMEM;
      return -1;
    }
    ssize_t n = xattr_call(path, name, buf, size);
    if (n >= 0) {
      *out = buf;
      return n;
    }
    free(buf);
    if (errno != ERANGE) return -1;
  }
  errno = ERANGE;
  return -1;
}

/* The magic link naming the object `fd` is open on (see the header: why not fgetxattr). */
static void proc_fd(char out[32], int32_t fd) {
  snprintf(out, 32, "/proc/self/fd/%d", fd);
}

static napi_value js_openat2(napi_env env, napi_callback_info info) {
  int32_t dirfd, flags, resolve;
  if (!int_arg(env, info, 0, &dirfd) || !int_arg(env, info, 2, &flags) || !int_arg(env, info, 3, &resolve)) return NULL;
  char *path = string_arg(env, info, 1);
  if (!path) return NULL;
  /* Unsigned conversions: flags and resolve are bit sets. */
  struct open_how how = { .flags = (uint32_t)flags | O_CLOEXEC, .mode = 0, .resolve = (uint32_t)resolve };
  long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
  napi_value result = NULL;
  if (fd < 0) throw_errno(env, errno, "openat2", path);
  else napi_create_int32(env, (int32_t)fd, &result);
  free(path);
  return result;
}

static napi_value js_readlinkat(napi_env env, napi_callback_info info) {
  int32_t fd;
  if (!int_arg(env, info, 0, &fd)) return NULL;
  char *path = string_arg(env, info, 1);
  if (!path) return NULL;
  /* A target is at most PATH_MAX bytes; one more tells a truncation apart. */
  char target[4097];
  ssize_t n = readlinkat(fd, path, target, sizeof target);
  napi_value result = NULL;
  if (n < 0) throw_errno(env, errno, "readlinkat", path);
  else if ((size_t)n == sizeof target) throw_errno(env, ENAMETOOLONG, "readlinkat", path);
  else napi_create_string_utf8(env, target, n, &result);
  free(path);
  return result;
}

static napi_value js_fgetxattr(napi_env env, napi_callback_info info) {
  int32_t fd;
  if (!int_arg(env, info, 0, &fd)) return NULL;
  char *name = string_arg(env, info, 1), *buf = NULL, path[32];
  napi_value result = NULL;
  if (name) {
    proc_fd(path, fd);
    ssize_t n = read_all(path, name, &buf);
    if (n >= 0) napi_create_buffer_copy(env, n, buf, NULL, &result);
    else if (errno == ENODATA) napi_get_undefined(env, &result);
    else throw_errno(env, errno, "fgetxattr", path);
  }
  free(buf);
  free(name);
  return result;
}

static napi_value js_flistxattr(napi_env env, napi_callback_info info) {
  int32_t fd;
  if (!int_arg(env, info, 0, &fd)) return NULL;
  char *buf = NULL, path[32];
  napi_value result = NULL;
  proc_fd(path, fd);
  ssize_t n = read_all(path, NULL, &buf);
  if (n < 0) {
    throw_errno(env, errno, "flistxattr", path);
  } else {
    /* The kernel's list: names, each ending in a NUL. */
    napi_create_array(env, &result);
    uint32_t count = 0;
    for (ssize_t at = 0; at < n;) {
      size_t len = strnlen(buf + at, n - at);
      napi_value s;
      napi_create_string_utf8(env, buf + at, len, &s);
      napi_set_element(env, result, count++, s);
      at += len + 1;
    }
  }
  free(buf);
  return result;
}

/* The uid of the process at the other end of a unix socket, as the kernel recorded it at connect. */
static napi_value js_peer_uid(napi_env env, napi_callback_info info) {
  int32_t fd;
  if (!int_arg(env, info, 0, &fd)) return NULL;
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return throw_errno(env, errno, "getsockopt", "SO_PEERCRED");
  napi_value uid;
  napi_create_uint32(env, cred.uid, &uid);
  return uid;
}

/* Array argument i as a NULL-terminated array of malloc'd strings; NULL (with an error thrown) when it is none. */
static char **string_array_arg(napi_env env, napi_callback_info info, size_t i) {
  napi_value args[4], item;
  size_t argc = 4, len;
  uint32_t n;
  bool is_array;
  napi_get_cb_info(env, info, &argc, args, NULL, NULL);
  if (i >= argc || napi_is_array(env, args[i], &is_array) != napi_ok || !is_array) {
    napi_throw_type_error(env, NULL, "expected an array of strings");
    return NULL;
  }
  napi_get_array_length(env, args[i], &n);
  char **out = calloc(n + 1, sizeof *out);
  if (!out) return NULL;
  for (uint32_t k = 0; k < n; k++) {
    napi_get_element(env, args[i], k, &item);
    if (napi_get_value_string_utf8(env, item, NULL, 0, &len) != napi_ok || !(out[k] = malloc(len + 1))) {
      napi_throw_type_error(env, NULL, "expected an array of strings");
      return NULL; /* leaked: the caller throws */
    }
    napi_get_value_string_utf8(env, item, out[k], len + 1, &len);
  }
  return out;
}

static napi_value js_execve(napi_env env, napi_callback_info info) {
  char *file = string_arg(env, info, 0);
  if (!file) return NULL;
  char **argv = string_array_arg(env, info, 1), **envp = argv ? string_array_arg(env, info, 2) : NULL;
  if (!argv || !envp) return NULL;
  /* Signals that come from here on stay pending across the exec (the new program takes them)
     instead of reaching libuv, whose handlers would be gone before it dispatched them. */
  sigset_t held, before;
  sigemptyset(&held);
  int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR2, SIGURG};
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaddset(&held, sigs[i]);
  pthread_sigmask(SIG_BLOCK, &held, &before);
  execve(file, argv, envp);
  int err = errno;
  pthread_sigmask(SIG_SETMASK, &before, NULL);
  return throw_errno(env, err, "execve", file);
}

static napi_value js_waitpid(napi_env env, napi_callback_info info) {
  int32_t pid;
  if (!int_arg(env, info, 0, &pid)) return NULL;
  int status;
  pid_t r = waitpid(pid, &status, WNOHANG);
  if (r < 0) return throw_errno(env, errno, "waitpid", "");
  napi_value result;
  if (r == 0) {
    napi_get_undefined(env, &result);
    return result;
  }
  napi_value code, sig, nul;
  napi_get_null(env, &nul);
  napi_create_object(env, &result);
  if (WIFEXITED(status)) napi_create_int32(env, WEXITSTATUS(status), &code);
  if (WIFSIGNALED(status)) napi_create_int32(env, WTERMSIG(status), &sig);
  napi_set_named_property(env, result, "code", WIFEXITED(status) ? code : nul);
  napi_set_named_property(env, result, "signal", WIFSIGNALED(status) ? sig : nul);
  return result;
}

static napi_value js_set_cloexec(napi_env env, napi_callback_info info) {
  int32_t fd, on;
  if (!int_arg(env, info, 0, &fd) || !int_arg(env, info, 1, &on)) return NULL;
  int flags = fcntl(fd, F_GETFD);
  if (flags < 0 || fcntl(fd, F_SETFD, on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC) < 0) return throw_errno(env, errno, "fcntl", "");
  return NULL;
}

static void set_int(napi_env env, napi_value obj, const char *name, int64_t value) {
  napi_value v;
  napi_create_int64(env, value, &v);
  napi_set_named_property(env, obj, name, v);
}

NAPI_MODULE_INIT() {
  napi_value constants;
  napi_create_object(env, &constants);
  set_int(env, constants, "O_PATH", O_PATH);
  set_int(env, constants, "O_DIRECTORY", O_DIRECTORY);
  set_int(env, constants, "O_NOFOLLOW", O_NOFOLLOW);
  set_int(env, constants, "RESOLVE_BENEATH", RESOLVE_BENEATH);
  set_int(env, constants, "RESOLVE_NO_SYMLINKS", RESOLVE_NO_SYMLINKS);
  set_int(env, constants, "RESOLVE_NO_MAGICLINKS", RESOLVE_NO_MAGICLINKS);
  set_int(env, constants, "AT_FDCWD", AT_FDCWD);
  napi_property_descriptor calls[] = {
    { "openat2", NULL, js_openat2, NULL, NULL, NULL, napi_enumerable, NULL },
    { "readlinkat", NULL, js_readlinkat, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fgetxattr", NULL, js_fgetxattr, NULL, NULL, NULL, napi_enumerable, NULL },
    { "flistxattr", NULL, js_flistxattr, NULL, NULL, NULL, napi_enumerable, NULL },
    { "peerUid", NULL, js_peer_uid, NULL, NULL, NULL, napi_enumerable, NULL },
    { "execve", NULL, js_execve, NULL, NULL, NULL, napi_enumerable, NULL },
    { "waitpid", NULL, js_waitpid, NULL, NULL, NULL, napi_enumerable, NULL },
    { "setCloexec", NULL, js_set_cloexec, NULL, NULL, NULL, napi_enumerable, NULL },
    { "constants", NULL, NULL, NULL, NULL, constants, napi_enumerable, NULL },
  };
  napi_define_properties(env, exports, sizeof calls / sizeof calls[0], calls);
  return exports;
}
