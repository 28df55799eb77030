/*
 * loader-hook/audit.c — the fscache LD_AUDIT library.
 *
 * For each library the dynamic loader is about to open, hand it the current epoch's
 * randomized image of that library (R/fscache/images/<epoch>/<key>.so) when a trusted
 * one exists, otherwise the original. Promises (DESIGN.md):
 *   - Fail open: every error path returns the loader's own name unchanged.
 *   - One image per library per epoch: the key is the identity of the file actually
 *     opened (fstat of our own descriptor: dev, ino, size, mtime ns), so every name of one
 *     file maps to one image and a changed file never maps to an old image.
 *   - Trust only root-owned state: the epoch file, the epoch directory and the image are
 *     opened with O_NOFOLLOW and checked with fstat on those descriptors (root-owned, not
 *     writable by group or others, right file type); the daemon's socket must have a root peer.
 *
 * Freestanding: -nostdlib -ffreestanding, raw syscalls (musl's syscall_arch.h style), no
 * allocation. The audit namespace then loads nothing but this file (no second libc).
 *
 * The root prefix R is compiled in (-DFSCACHE_HOOK_ROOT="/..."; "/" for a system install).
 * Deliberately not an environment variable: nothing an unprivileged user controls can point
 * the hook at another images directory (the ownership checks are the second line).
 *
 * Stages (FINDINGS.md "The loader hook"):
 *   - A name containing '/' (dlopen("/abs/path"), DT_NEEDED with a slash) is seen only at
 *     LA_SER_ORIG; if absolute it is redirected there, so l_name becomes the image and gdb,
 *     dladdr and /proc/PID/maps all name the image (symbols read from the image: correct).
 *     Exception: a library whose DT_RUNPATH/DT_RPATH uses $ORIGIN is not redirected at
 *     LA_SER_ORIG, since $ORIGIN would then resolve to the images directory (refuse, don't guess).
 *   - A bare name is left alone at LA_SER_ORIG: resolving it exactly as the loader would
 *     (requester RUNPATH/RPATH, LD_LIBRARY_PATH, ld.so.cache with hwcaps subdirectories) is not
 *     attempted. Each candidate path the loader then tries (LA_SER_LIBPATH, _RUNPATH, _CONFIG,
 *     _DEFAULT) is redirected instead. The loader maps the image but keeps l_name (and $ORIGIN)
 *     at the original path: dependencies through $ORIGIN resolve as before; /proc/PID/maps and
 *     perf (which read maps) name and symbolize the image correctly; gdb and dladdr's
 *     dli_fname name the original file, so gdb reads the original's symbols (wrong function
 *     names inside that library).
 *
 * Concurrency: la_objsearch runs with the loader's dl_load_lock held (initial load is single-
 * threaded; dlopen serializes), so the two static return buffers are never written by two
 * threads at once. The epoch state is written once in la_version, before any thread exists,
 * and only read afterwards. No descriptor outlives a call (a program that closes all
 * descriptors cannot make us use a reused number), and nothing holds a lock across fork.
 */
#include <stddef.h>
#include <stdint.h>
#include <elf.h>

#ifndef FSCACHE_HOOK_ROOT
#define FSCACHE_HOOK_ROOT "/"
#endif

#define EXPORT __attribute__((visibility("default")))

/* rtld-audit(7) */
#define LAV_CURRENT_OURS 2u
#define LA_SER_ORIG 0x01u

/* ---- raw syscalls (x86-64) ---- */
#define SYS_read 0
#define SYS_close 3
#define SYS_fstat 5
#define SYS_pread64 17
#define SYS_socket 41
#define SYS_connect 42
#define SYS_sendto 44
#define SYS_setsockopt 54
#define SYS_getsockopt 55
#define SYS_openat 257

static inline long sc1(long n, long a) {
  unsigned long r;
  __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a) : "rcx", "r11", "memory");
  return (long)r;
}
static inline long sc2(long n, long a, long b) {
  unsigned long r;
  __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b) : "rcx", "r11", "memory");
  return (long)r;
}
static inline long sc3(long n, long a, long b, long c) {
  unsigned long r;
  __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
  return (long)r;
}
static inline long sc4(long n, long a, long b, long c, long d) {
  unsigned long r;
  register long r10 __asm__("r10") = d;
  __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
  return (long)r;
}
static inline long sc5(long n, long a, long b, long c, long d, long e) {
  unsigned long r;
  register long r10 __asm__("r10") = d;
  register long r8 __asm__("r8") = e;
  __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8) : "rcx", "r11", "memory");
  return (long)r;
}
static inline long sc6(long n, long a, long b, long c, long d, long e, long f) {
  unsigned long r;
  register long r10 __asm__("r10") = d;
  register long r8 __asm__("r8") = e;
  register long r9 __asm__("r9") = f;
  __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  return (long)r;
}

#define AT_FDCWD (-100)
#define ELOOP_ 40
#define O_RDONLY 0
#define O_DIRECTORY 0200000
#define O_NOFOLLOW 0400000
#define O_CLOEXEC 02000000
#define S_IFMT 0170000
#define S_IFREG 0100000
#define S_IFDIR 0040000
#define AF_UNIX 1
#define SOCK_STREAM 1
#define SOCK_CLOEXEC O_CLOEXEC
#define SOL_SOCKET 1
#define SO_PEERCRED 17
#define SO_RCVTIMEO 20
#define SO_SNDTIMEO 21
#define MSG_NOSIGNAL 0x4000

/* The kernel's struct stat on x86-64. */
struct kstat {
  unsigned long dev, ino, nlink;
  unsigned int mode, uid, gid, pad0;
  unsigned long rdev;
  long size, blksize, blocks;
  unsigned long atime, atime_ns, mtime, mtime_ns, ctime, ctime_ns;
  long unused[3];
};
struct ktimeval { long sec, usec; };
struct kucred { int pid; unsigned int uid, gid; };
struct ksockaddr_un { unsigned short family; char path[108]; };

static int sys_open(const char *p, int flags) { return (int)sc4(SYS_openat, AT_FDCWD, (long)p, flags, 0); }
static int sys_openat(int dfd, const char *p, int flags) { return (int)sc4(SYS_openat, dfd, (long)p, flags, 0); }
static void sys_close(int fd) { sc1(SYS_close, fd); }
static int sys_fstat(int fd, struct kstat *st) { return (int)sc2(SYS_fstat, fd, (long)st); }
static long sys_pread(int fd, void *b, unsigned long n, long off) { return sc4(SYS_pread64, fd, (long)b, (long)n, off); }
static long sys_read(int fd, void *b, unsigned long n) { return sc3(SYS_read, fd, (long)b, (long)n); }

/* ---- small string helpers (no libc) ---- */
#define PATH_MAX_ 4096

static unsigned long slen(const char *s) { unsigned long n = 0; while (s[n]) n++; return n; }

/* Appends s to buf at *at; 0 when it does not fit (the caller then falls back to the original). */
static int put(char *buf, unsigned long cap, unsigned long *at, const char *s) {
  for (; *s; s++) {
    if (*at + 1 >= cap) return 0;
    buf[(*at)++] = *s;
  }
  buf[*at] = 0;
  return 1;
}

static int put_dec(char *buf, unsigned long cap, unsigned long *at, unsigned long v) {
  char t[24];
  int i = 23;
  t[i] = 0;
  do { t[--i] = (char)('0' + v % 10); v /= 10; } while (v);
  return put(buf, cap, at, t + i);
}

static int put_hex(char *buf, unsigned long cap, unsigned long *at, unsigned long v) {
  char t[20];
  int i = 19;
  t[i] = 0;
  do { t[--i] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v);
  return put(buf, cap, at, t + i);
}

static int has_sub(const char *s, unsigned long n, const char *needle) {
  unsigned long m = slen(needle);
  for (unsigned long i = 0; i + m <= n; i++) {
    unsigned long j = 0;
    while (j < m && s[i + j] == needle[j]) j++;
    if (j == m) return 1;
  }
  return 0;
}

/* ---- state written once by la_version, read-only afterwards ---- */
enum miss_mode { MISS_ORIGINAL = 0, MISS_WAIT = 1 };
static struct {
  int ok;                       /* 1: an epoch is active and its file was trusted */
  enum miss_mode on_miss;
  unsigned long wait_ms;
  char epoch_dir[PATH_MAX_];    /* R/<images>/<epoch> */
  char sock[108];               /* R/run/fscache/hook.sock, empty if too long */
  char libdirs[1024];           /* "dir1:dir2:..." relative to R: only these are worth asking about */
} g;

/* The loader copies what we return before its next la_objsearch call under the same lock,
   but the name returned at LA_SER_ORIG stays in use while later stages run: keep them apart. */
static char ret_orig[PATH_MAX_];
static char ret_later[PATH_MAX_];

/* Root-owned and not writable by group or others: the whole trust rule, on a descriptor. */
static int trusted(const struct kstat *st, unsigned int type) {
  return (st->mode & S_IFMT) == type && st->uid == 0 && (st->mode & 022) == 0;
}

/* Reads R/run/fscache/epoch:
   "<epoch> <wait|original> <wait_ms> <images dir relative to R> <library dirs relative to R, ':'-joined>\n". */
static void load_epoch(void) {
  char path[PATH_MAX_];
  unsigned long at = 0;
  if (!put(path, sizeof path, &at, FSCACHE_HOOK_ROOT) || !put(path, sizeof path, &at, "/run/fscache/epoch")) return;
  int fd = sys_open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return;
  struct kstat st;
  char buf[512];
  long n = -1;
  /* A non-root writer could otherwise choose which directory we look in. */
  if (sys_fstat(fd, &st) == 0 && trusted(&st, S_IFREG)) n = sys_read(fd, buf, sizeof buf - 1);
  sys_close(fd);
  if (n <= 0) return;
  buf[n] = 0;
  char *f[5];
  int nf = 0;
  char *p = buf;
  while (nf < 5) {
    while (*p == ' ') p++;
    if (!*p || *p == '\n') break;
    f[nf++] = p;
    while (*p && *p != ' ' && *p != '\n') p++;
    if (*p) *p++ = 0;
  }
  if (nf != 5) return;
  /* Epoch and images dir: no "..", no absolute path, so the state cannot leave R. */
  for (char *c = f[0]; *c; c++) if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z'))) return;
  if (f[3][0] == '/' || has_sub(f[3], slen(f[3]), "..")) return;
  g.on_miss = (f[1][0] == 'w') ? MISS_WAIT : MISS_ORIGINAL;
  unsigned long ms = 0;
  for (char *c = f[2]; *c >= '0' && *c <= '9'; c++) ms = ms * 10 + (unsigned long)(*c - '0');
  g.wait_ms = ms > 60000 ? 60000 : ms;
  at = 0;
  if (!put(g.epoch_dir, sizeof g.epoch_dir, &at, FSCACHE_HOOK_ROOT) || !put(g.epoch_dir, sizeof g.epoch_dir, &at, "/") ||
      !put(g.epoch_dir, sizeof g.epoch_dir, &at, f[3]) || !put(g.epoch_dir, sizeof g.epoch_dir, &at, "/") ||
      !put(g.epoch_dir, sizeof g.epoch_dir, &at, f[0]))
    return;
  at = 0;
  if (!put(g.libdirs, sizeof g.libdirs, &at, f[4])) g.libdirs[0] = 0;
  at = 0;
  if (!put(g.sock, sizeof g.sock, &at, FSCACHE_HOOK_ROOT) || !put(g.sock, sizeof g.sock, &at, "/run/fscache/hook.sock")) g.sock[0] = 0;
  g.ok = 1;
}

EXPORT unsigned int la_version(unsigned int version) {
  load_epoch();
  /* 0 would disable the auditor; we use nothing newer than version 2's la_objsearch. */
  return version < LAV_CURRENT_OURS ? version : LAV_CURRENT_OURS;
}

/* Does the library on fd use $ORIGIN in DT_RUNPATH/DT_RPATH? 1 yes, 0 no, -1 cannot tell. */
static int uses_origin(int fd) {
  Elf64_Ehdr eh;
  if (sys_pread(fd, &eh, sizeof eh, 0) != (long)sizeof eh) return -1;
  if (eh.e_ident[0] != 0x7f || eh.e_ident[1] != 'E' || eh.e_ident[2] != 'L' || eh.e_ident[3] != 'F') return -1;
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum > 64) return -1;
  Elf64_Phdr ph[64];
  long want = (long)(eh.e_phnum * sizeof(Elf64_Phdr));
  if (sys_pread(fd, ph, (unsigned long)want, (long)eh.e_phoff) != want) return -1;
  const Elf64_Phdr *dyn = 0;
  for (int i = 0; i < eh.e_phnum; i++) if (ph[i].p_type == PT_DYNAMIC) dyn = &ph[i];
  if (!dyn) return 0;
  Elf64_Dyn d[256];
  unsigned long dn = dyn->p_filesz / sizeof(Elf64_Dyn);
  if (dn > 256) return -1;
  if (sys_pread(fd, d, dn * sizeof(Elf64_Dyn), (long)dyn->p_offset) != (long)(dn * sizeof(Elf64_Dyn))) return -1;
  unsigned long strtab = 0, paths[2];
  int np = 0;
  for (unsigned long i = 0; i < dn && d[i].d_tag != DT_NULL; i++) {
    if (d[i].d_tag == DT_STRTAB) strtab = d[i].d_un.d_ptr;
    else if ((d[i].d_tag == DT_RUNPATH || d[i].d_tag == DT_RPATH) && np < 2) paths[np++] = d[i].d_un.d_val;
  }
  if (np == 0) return 0;
  long stroff = -1;
  for (int i = 0; i < eh.e_phnum; i++)
    if (ph[i].p_type == PT_LOAD && strtab >= ph[i].p_vaddr && strtab < ph[i].p_vaddr + ph[i].p_filesz)
      stroff = (long)(strtab - ph[i].p_vaddr + ph[i].p_offset);
  if (stroff < 0) return -1;
  for (int k = 0; k < np; k++) {
    char s[1024];
    long n = sys_pread(fd, s, sizeof s, stroff + (long)paths[k]);
    if (n <= 0) return -1;
    unsigned long len = 0;
    while (len < (unsigned long)n && s[len]) len++;
    if (len == (unsigned long)n) return -1; /* longer than we read: cannot tell */
    if (has_sub(s, len, "$ORIGIN") || has_sub(s, len, "${ORIGIN}")) return 1;
  }
  return 0;
}

/* Looks up <key>.so, then <key>.pass, in the epoch directory, trusting only what is root-owned and
   not writable by others. IMAGE: a trusted image; PASS: a trusted pass-through marker; UNTRUSTED:
   something is there but not trusted (planted): load the original without asking; NONE: a miss. */
enum { NONE = 0, IMAGE = 1, PASS = 2, UNTRUSTED = 3 };
static int lookup(const char *key) {
  int dfd = sys_open(g.epoch_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (dfd < 0) return NONE;
  struct kstat st;
  int found = NONE;
  /* A directory others can write to could hold a planted image under a valid key. */
  if (!(sys_fstat(dfd, &st) == 0 && trusted(&st, S_IFDIR))) {
    found = UNTRUSTED;
  } else {
    for (int i = 0; i < 2 && found == NONE; i++) {
      char name[128];
      unsigned long at = 0;
      if (!put(name, sizeof name, &at, key) || !put(name, sizeof name, &at, i == 0 ? ".so" : ".pass")) break;
      int fd = sys_openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
      if (fd == -ELOOP_) { found = UNTRUSTED; break; } /* a symlink planted under the key */
      if (fd < 0) continue;
      /* Not a symlink (O_NOFOLLOW), a regular file, root-owned, not writable by others. */
      found = sys_fstat(fd, &st) == 0 && trusted(&st, S_IFREG) ? (i == 0 ? IMAGE : PASS) : UNTRUSTED;
      sys_close(fd);
    }
  }
  sys_close(dfd);
  return found;
}

/*
 * Asks the daemon for an image of `path` (identity `st`). With on_miss=wait, waits at most
 * wait_ms for its answer and returns 1 when it says the image is ready; with on_miss=original,
 * sends the request and returns 0 at once (the next launch hits).
 */
static int ask_daemon(const char *path, const struct kstat *st) {
  if (!g.sock[0]) return 0;
  int s = (int)sc3(SYS_socket, AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return 0;
  int ready = 0;
  unsigned long ms = g.on_miss == MISS_WAIT ? g.wait_ms : 50; /* bounded even when just sending */
  struct ktimeval tv = { (long)(ms / 1000), (long)((ms % 1000) * 1000) };
  if (tv.sec == 0 && tv.usec == 0) tv.usec = 1000;
  struct ksockaddr_un sa;
  sa.family = AF_UNIX;
  unsigned long i = 0;
  for (; g.sock[i] && i < sizeof sa.path - 1; i++) sa.path[i] = g.sock[i];
  sa.path[i] = 0;
  struct kucred cred;
  unsigned int credlen = sizeof cred;
  char req[PATH_MAX_ + 128];
  unsigned long at = 0;
  if (sc5(SYS_setsockopt, s, SOL_SOCKET, SO_RCVTIMEO, (long)&tv, sizeof tv) != 0 ||
      sc5(SYS_setsockopt, s, SOL_SOCKET, SO_SNDTIMEO, (long)&tv, sizeof tv) != 0 ||
      sc3(SYS_connect, s, (long)&sa, (long)(2 + i + 1)) != 0 ||
      /* Only a root daemon may make us wait or tell us an image is ready. */
      sc5(SYS_getsockopt, s, SOL_SOCKET, SO_PEERCRED, (long)&cred, (long)&credlen) != 0 || cred.uid != 0)
    goto out;
  if (!put(req, sizeof req, &at, "Q ") || !put_dec(req, sizeof req, &at, st->dev) || !put(req, sizeof req, &at, " ") ||
      !put_dec(req, sizeof req, &at, st->ino) || !put(req, sizeof req, &at, " ") ||
      !put_dec(req, sizeof req, &at, (unsigned long)st->size) || !put(req, sizeof req, &at, " ") ||
      !put_dec(req, sizeof req, &at, st->mtime * 1000000000ul + st->mtime_ns) || !put(req, sizeof req, &at, " ") ||
      !put(req, sizeof req, &at, path) || !put(req, sizeof req, &at, "\n"))
    goto out;
  for (unsigned long sent = 0; sent < at;) {
    long n = sc6(SYS_sendto, s, (long)(req + sent), (long)(at - sent), MSG_NOSIGNAL, 0, 0);
    if (n <= 0) goto out;
    sent += (unsigned long)n;
  }
  if (g.on_miss == MISS_WAIT) {
    /* Anything but a complete "OK\n" (garbage, a timeout, a refusal) means the original. */
    char rep[64];
    unsigned long got = 0;
    while (got < sizeof rep) {
      long n = sys_read(s, rep + got, sizeof rep - got);
      if (n <= 0) break;
      got += (unsigned long)n;
      if (rep[got - 1] == '\n') break;
    }
    ready = got == 3 && rep[0] == 'O' && rep[1] == 'K' && rep[2] == '\n';
  }
out:
  sys_close(s);
  return ready;
}

/* Is `path` under R/<one of the library dirs>/? A gate for asking only (the daemon decides on its
   own descriptor): system libraries outside them would otherwise cost a round trip per launch. */
static int in_library_dirs(const char *path) {
  const char *r = FSCACHE_HOOK_ROOT;
  unsigned long rl = slen(r);
  while (rl > 0 && r[rl - 1] == '/') rl--;
  for (unsigned long i = 0; i < rl; i++) if (path[i] != r[i]) return 0;
  const char *rest = path + rl;
  if (*rest != '/') return 0;
  rest++;
  for (const char *d = g.libdirs; *d;) {
    unsigned long n = 0;
    while (d[n] && d[n] != ':') n++;
    unsigned long j = 0;
    while (j < n && rest[j] == d[j]) j++;
    if (n > 0 && j == n && rest[n] == '/') return 1;
    d += n;
    if (*d == ':') d++;
  }
  return 0;
}

/* The image path for the library named `path`, copied into `out`, or 0 for "load the original". */
static char *image_for(const char *path, char *out, int at_orig) {
  /* Images exist only for libraries in the library dirs (the daemon's rule): the system's other
     libraries (libc, ...) then cost no syscall at all. A name outside them that is a symlink into
     them loads the original: fail open. */
  if (!in_library_dirs(path)) return 0;
  int fd = sys_open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0; /* the loader will not find it either: nothing to say */
  struct kstat st;
  int ok = sys_fstat(fd, &st) == 0 && (st.mode & S_IFMT) == S_IFREG;
  /* At LA_SER_ORIG l_name becomes the image; $ORIGIN would then point into the images dir. */
  if (ok && at_orig && uses_origin(fd) != 0) ok = 0;
  sys_close(fd);
  if (!ok) return 0;
  char key[96];
  unsigned long k = 0;
  put_hex(key, sizeof key, &k, st.dev); put(key, sizeof key, &k, "-");
  put_hex(key, sizeof key, &k, st.ino); put(key, sizeof key, &k, "-");
  put_hex(key, sizeof key, &k, (unsigned long)st.size); put(key, sizeof key, &k, "-");
  put_hex(key, sizeof key, &k, st.mtime * 1000000000ul + st.mtime_ns);
  int found = lookup(key);
  /* PASS: a library the daemon refused is marked so that launches do not ask again. UNTRUSTED:
     planted state is never an occasion to ask (nor to wait). */
  if (found != IMAGE && !(found == NONE && ask_daemon(path, &st) && lookup(key) == IMAGE)) return 0;
  unsigned long at = 0;
  if (!put(out, PATH_MAX_, &at, g.epoch_dir) || !put(out, PATH_MAX_, &at, "/") || !put(out, PATH_MAX_, &at, key) ||
      !put(out, PATH_MAX_, &at, ".so"))
    return 0;
  return out;
}

EXPORT char *la_objsearch(const char *name, uintptr_t *cookie, unsigned int flag) {
  (void)cookie;
  if (!g.ok || !name || name[0] != '/') return (char *)name; /* bare or relative names: see header */
  int orig = (flag & LA_SER_ORIG) != 0;
  char *img = image_for(name, orig ? ret_orig : ret_later, orig);
  return img ? img : (char *)name;
}
