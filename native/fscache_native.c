/*
 * fscache_native: the system calls fscache needs that Node's fs does not offer.
 *
 * Why native code: Node's fs has no xattr call, and running getfattr instead deadlocked
 * a view installed inside the /usr it serves (issue 13, measured): an exec's GETXATTR of
 * security.capability made the view exec getfattr, which is found and loaded through
 * PATH = /usr = the view, whose main thread was waiting for that exec. A system call on
 * the real tree, made in the view's own process, never goes through the view.
 *
 * Calls, synchronous (each is a few microseconds on the real tree):
 *   lgetxattr(path, name) -> Buffer | undefined    undefined: no such attribute (ENODATA)
 *   llistxattr(path)      -> string[]
 * Neither follows a final symlink: the view serves symlinks as symlinks. A failure throws
 * what Node's fs throws: an Error with code (the errno name, e.g. 'ENOENT'), errno
 * (negative), syscall and path. Built by node-gyp (binding.gyp) in `npm run build`.
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>

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
  napi_value args[2];
  size_t argc = 2, len;
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

/* lgetxattr of `name`, or llistxattr when name is NULL: one size-probing loop serves both. */
static ssize_t xattr_call(const char *path, const char *name, char *buf, size_t size) {
  return name ? lgetxattr(path, name, buf, size) : llistxattr(path, buf, size);
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

static napi_value js_lgetxattr(napi_env env, napi_callback_info info) {
  char *path = string_arg(env, info, 0), *name = path ? string_arg(env, info, 1) : NULL, *buf = NULL;
  napi_value result = NULL;
  if (name) {
    ssize_t n = read_all(path, name, &buf);
    if (n >= 0) napi_create_buffer_copy(env, n, buf, NULL, &result);
    else if (errno == ENODATA) napi_get_undefined(env, &result);
    else throw_errno(env, errno, "lgetxattr", path);
  }
  free(buf);
  free(name);
  free(path);
  return result;
}

static napi_value js_llistxattr(napi_env env, napi_callback_info info) {
  char *path = string_arg(env, info, 0), *buf = NULL;
  napi_value result = NULL;
  if (path) {
    ssize_t n = read_all(path, NULL, &buf);
    if (n < 0) {
      throw_errno(env, errno, "llistxattr", path);
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
  }
  free(buf);
  free(path);
  return result;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor calls[] = {
    { "lgetxattr", NULL, js_lgetxattr, NULL, NULL, NULL, napi_enumerable, NULL },
    { "llistxattr", NULL, js_llistxattr, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  napi_define_properties(env, exports, sizeof calls / sizeof calls[0], calls);
  return exports;
}
