/*
 * loader-hook/audit.c — the fscache LD_AUDIT library.
 *
 * For each library the dynamic loader is about to open, hand it the current epoch's
 * randomized image of that library (R/fscache/images/<epoch>/<key>.so) when a trusted
 * one exists, otherwise the original. Promises (DESIGN.md):
 *   - Fail open: every error path returns the loader's own name unchanged.
 *   - One image per library per epoch: the key is the library file's identity (dev, ino,
 *     size, mtime ns), so every name of one file maps to one image and a changed file never
 *     maps to an old image. At LA_SER_ORIG it is fstat of our own descriptor; for a search-path
 *     candidate (the later stages) it is a stat of the name, following links as the loader's
 *     open will, a moment before that open; through the view, an lstat of the real tree's file
 *     (on_real_side). A library replaced in that moment may still get the image of the file the
 *     stat saw: the code a launch a moment earlier would have run, never a mix of the two.
 *   - Trust only root-owned state: the epoch file (opened with O_NOFOLLOW, checked with fstat on
 *     that descriptor), the epoch directory (once per process) and the image (at each use) checked
 *     with lstat: root-owned, not writable by group or others, right file type, not a symlink. The
 *     loader opens the returned path by name anyway, so a descriptor would prove no more.
 *     The daemon's socket must have a root peer. An image is used only if its size equals its mtime
 *     (the daemon's seal of the size it wrote; contents are re-hashed by a daemon taking over an epoch).
 *
 * Cost: a hit at a later stage is two stat calls (the candidate, the image); at LA_SER_ORIG the
 * candidate is opened and its dynamic section read ($ORIGIN check). ld.so.cache is mapped only
 * when a bare name first needs it. bench/RESULTS.md has what this costs above LD_AUDIT's own floor.
 * A library found through the view (R/usr pointing at it) costs three calls more (open O_PATH,
 * readlink of /proc/self/fd, lstat of the real tree's file: on_real_side), since images are keyed
 * by the real tree's file.
 *
 * Freestanding: -nostdlib -ffreestanding, raw syscalls (musl's syscall_arch.h style), no
 * allocation. The audit namespace then loads nothing but this file (no second libc).
 *
 * The root prefix R is compiled in (-DFSCACHE_HOOK_ROOT="/..."; "/" for a system install).
 * Deliberately not an environment variable: nothing an unprivileged user controls can point
 * the hook at another images directory (the ownership checks are the second line).
 *
 * Stages (the project's FINDINGS.md, ../shared beside the repository, "The loader hook"):
 *   - A name containing '/' (dlopen("/abs/path"), DT_NEEDED with a slash) is seen only at
 *     LA_SER_ORIG; if absolute it is redirected there, so l_name becomes the image and gdb,
 *     dladdr and /proc/PID/maps all name the image (symbols read from the image: correct).
 *     Exception: a library whose DT_RUNPATH/DT_RPATH uses $ORIGIN is not redirected at
 *     LA_SER_ORIG, since $ORIGIN would then resolve to the images directory (refuse, don't guess).
 *   - A bare name is resolved at LA_SER_ORIG only where the loader's answer is certainly the single
 *     ld.so.cache entry (see resolve_bare: no LD_LIBRARY_PATH, no DT_RPATH in the namespace, no
 *     DT_RUNPATH/NODEFLIB on the requester found through the audit cookie = its link_map, one
 *     plain x86-64 cache entry); then it is redirected there, with the same effect as above.
 *   - Otherwise the bare name goes on unchanged and each candidate path the loader then tries
 *     (LA_SER_LIBPATH, _RUNPATH, _CONFIG, _DEFAULT) is redirected instead. The loader maps the
 *     image but keeps l_name (and $ORIGIN) at the original path: dependencies through $ORIGIN
 *     resolve as before; /proc/PID/maps and perf (which read maps) name and symbolize the image;
 *     gdb and dladdr's dli_fname name the original file, so gdb reads the original's symbols
 *     (wrong function names inside that library).
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

/* ---- raw syscalls, per architecture (musl's arch/<arch>/syscall_arch.h and bits/syscall.h) ----
 * Each architecture gives its syscall numbers, sc1..sc6, its kernel struct stat and the flags of
 * its own ld.so.cache entries and ELF machine; everything below this section is architecture-independent. */
#if defined(__x86_64__)
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
#define SYS_mmap 9
#define SYS_newfstatat 262
#define SYS_readlinkat 267

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

/* The kernel's struct stat on x86-64. */
struct kstat {
  unsigned long dev, ino, nlink;
  unsigned int mode, uid, gid, pad0;
  unsigned long rdev;
  long size, blksize, blocks;
  unsigned long atime, atime_ns, mtime, mtime_ns, ctime, ctime_ns;
  long unused[3];
};
/* ld.so.cache entries the loader of this architecture uses: FLAG_ELF_LIBC6 | FLAG_X8664_LIB64. */
#define CACHE_FLAGS_NATIVE 0x0303u
#define EM_NATIVE EM_X86_64

#elif defined(__aarch64__)
/* The generic syscall table (asm-generic/unistd.h). */
#define SYS_read 63
#define SYS_close 57
#define SYS_fstat 80
#define SYS_pread64 67
#define SYS_socket 198
#define SYS_connect 203
#define SYS_sendto 206
#define SYS_setsockopt 208
#define SYS_getsockopt 209
#define SYS_openat 56
#define SYS_mmap 222
#define SYS_newfstatat 79
#define SYS_readlinkat 78

/* svc 0: number in x8, arguments in x0..x5, result in x0. */
#define SVC(...) __asm__ volatile("svc 0" : "=r"(x0) : __VA_ARGS__ : "memory", "cc"); return x0
static inline long sc1(long n, long a) {
  register long x8 __asm__("x8") = n, x0 __asm__("x0") = a;
  SVC("r"(x8), "0"(x0));
}
static inline long sc2(long n, long a, long b) {
  register long x8 __asm__("x8") = n, x0 __asm__("x0") = a, x1 __asm__("x1") = b;
  SVC("r"(x8), "0"(x0), "r"(x1));
}
static inline long sc3(long n, long a, long b, long c) {
  register long x8 __asm__("x8") = n, x0 __asm__("x0") = a, x1 __asm__("x1") = b, x2 __asm__("x2") = c;
  SVC("r"(x8), "0"(x0), "r"(x1), "r"(x2));
}
static inline long sc4(long n, long a, long b, long c, long d) {
  register long x8 __asm__("x8") = n, x0 __asm__("x0") = a, x1 __asm__("x1") = b, x2 __asm__("x2") = c;
  register long x3 __asm__("x3") = d;
  SVC("r"(x8), "0"(x0), "r"(x1), "r"(x2), "r"(x3));
}
static inline long sc5(long n, long a, long b, long c, long d, long e) {
  register long x8 __asm__("x8") = n, x0 __asm__("x0") = a, x1 __asm__("x1") = b, x2 __asm__("x2") = c;
  register long x3 __asm__("x3") = d, x4 __asm__("x4") = e;
  SVC("r"(x8), "0"(x0), "r"(x1), "r"(x2), "r"(x3), "r"(x4));
}
static inline long sc6(long n, long a, long b, long c, long d, long e, long f) {
  register long x8 __asm__("x8") = n, x0 __asm__("x0") = a, x1 __asm__("x1") = b, x2 __asm__("x2") = c;
  register long x3 __asm__("x3") = d, x4 __asm__("x4") = e, x5 __asm__("x5") = f;
  SVC("r"(x8), "0"(x0), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5));
}

/* The kernel's struct stat on aarch64 (asm-generic/stat.h): nlink is 32-bit and follows mode. */
struct kstat {
  unsigned long dev, ino;
  unsigned int mode, nlink, uid, gid;
  unsigned long rdev, pad1;
  long size;
  int blksize, pad2;
  long blocks;
  unsigned long atime, atime_ns, mtime, mtime_ns, ctime, ctime_ns;
  unsigned int unused[2];
};
/* FLAG_ELF_LIBC6 | FLAG_AARCH64_LIB64. */
#define CACHE_FLAGS_NATIVE 0x0a03u
#define EM_NATIVE EM_AARCH64

#else
/* 32-bit ARM and others: stat64/fstatat64, mmap2 and a 32-bit ELF reader below would be needed. */
#error "loader-hook/audit.c: no syscall wrappers for this architecture (x86-64 and aarch64 are supported)"
#endif

#define AT_FDCWD (-100)
#define AT_SYMLINK_NOFOLLOW 0x100
#define ENOENT_ 2
#define O_RDONLY 0
#define O_NOFOLLOW 0400000
#define O_CLOEXEC 02000000
#define O_PATH 010000000
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
#define PROT_READ 1
#define MAP_PRIVATE 2

struct ktimeval { long sec, usec; };
struct kucred { int pid; unsigned int uid, gid; };
struct ksockaddr_un { unsigned short family; char path[108]; };

static int sys_open(const char *p, int flags) { return (int)sc4(SYS_openat, AT_FDCWD, (long)p, flags, 0); }
static void sys_close(int fd) { sc1(SYS_close, fd); }
/* stat (flags 0) or lstat (AT_SYMLINK_NOFOLLOW) by name: 0 or -errno. */
static int sys_stat(const char *p, struct kstat *st, int flags) { return (int)sc4(SYS_newfstatat, AT_FDCWD, (long)p, (long)st, flags); }
static int sys_fstat(int fd, struct kstat *st) { return (int)sc2(SYS_fstat, fd, (long)st); }
static long sys_pread(int fd, void *b, unsigned long n, long off) { return sc4(SYS_pread64, fd, (long)b, (long)n, off); }
static long sys_read(int fd, void *b, unsigned long n) { return sc3(SYS_read, fd, (long)b, (long)n); }

/* ---- small string helpers (no libc) ---- */
#define PATH_MAX_ 4096
/* Our own paths (epoch directory, images): small, so that all writable state fits in one page
   (each page touched is a fault in every process); a longer R or images dir: the hook stays off. */
#define DIR_MAX 448
#define RET_MAX (DIR_MAX + 96) /* + "/" + key (at most 4 x 16 hex digits + 3) + ".pass" */

static unsigned long slen(const char *s) { unsigned long n = 0; while (s[n]) n++; return n; }

/* Length of R without trailing slashes: paths sent to the daemon are relative to R ("/lib/x.so"), so
   one daemon outside a chroot of R serves the processes inside it. */
static unsigned long root_len(void) {
  const char *r = FSCACHE_HOOK_ROOT;
  unsigned long rl = slen(r);
  while (rl > 0 && r[rl - 1] == '/') rl--;
  return rl;
}

/* Appends s (at most n bytes of it) to buf at *at; 0 when it does not fit (the caller then falls
   back to the original). */
static int put_n(char *buf, unsigned long cap, unsigned long *at, const char *s, unsigned long n) {
  for (unsigned long i = 0; i < n && s[i]; i++) {
    if (*at + 1 >= cap) return 0;
    buf[(*at)++] = s[i];
  }
  buf[*at] = 0;
  return 1;
}

/* Appends s to buf at *at; 0 when it does not fit. */
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
enum dir_state { DIR_MISSING = 0, DIR_TRUSTED = 1, DIR_UNTRUSTED = 2 };
static struct {
  int ok;                       /* 1: an epoch is active and its file was trusted */
  enum dir_state dir;           /* the epoch directory, as found by la_version (or later, if missing then) */
  enum miss_mode on_miss;
  unsigned long wait_ms;
  char epoch_dir[DIR_MAX];      /* R/<images>/<epoch> */
  char sock[108];               /* R/run/fscache/hook.sock, empty if too long */
  char libdirs[1024];           /* "dir1:dir2:..." relative to R: only these are worth asking about */
  unsigned long real_dev;       /* device of R/<real tree>, 0 if unknown (then no view mapping) */
  char real_dir[DIR_MAX / 4];   /* R/<real tree> (longer: no view mapping) */
  char view_dir[DIR_MAX / 4];   /* R/<view mount> */
} g;

/* The loader copies what we return before its next la_objsearch call under the same lock,
   but the name returned at LA_SER_ORIG stays in use while later stages run: keep them apart. */
static char ret_orig[RET_MAX];
static char ret_later[RET_MAX];

/* Root-owned and not writable by group or others: the whole trust rule, on a descriptor. */
static int trusted(const struct kstat *st, unsigned int type) {
  return (st->mode & S_IFMT) == type && st->uid == 0 && (st->mode & 022) == 0;
}

/* Once per process (again only while it is missing): a directory others can write to could hold
   a planted image under a valid key; lstat: a symlink in its place is not trusted either. */
static void check_epoch_dir(void) {
  struct kstat st;
  int r = sys_stat(g.epoch_dir, &st, AT_SYMLINK_NOFOLLOW);
  g.dir = r == -ENOENT_ ? DIR_MISSING : r == 0 && trusted(&st, S_IFDIR) ? DIR_TRUSTED : DIR_UNTRUSTED;
}

/* R/<rel> into buf; 0 when rel is absolute, contains "..", or does not fit (the state cannot leave R). */
static int under_root(char *buf, unsigned long cap, const char *rel) {
  unsigned long at = 0;
  if (rel[0] == '/' || has_sub(rel, slen(rel), "..")) return 0;
  return put_n(buf, cap, &at, FSCACHE_HOOK_ROOT, root_len()) && put(buf, cap, &at, "/") && put(buf, cap, &at, rel);
}

/* Reads R/run/fscache/epoch: "<epoch> <wait|original> <wait_ms> <images dir relative to R>
   <library dirs relative to R, ':'-joined> <real tree relative to R> <view mount relative to R>\n". */
static void load_epoch(void) {
  char path[PATH_MAX_];
  unsigned long at = 0;
  if (!put_n(path, sizeof path, &at, FSCACHE_HOOK_ROOT, root_len()) || !put(path, sizeof path, &at, "/run/fscache/epoch")) return;
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
  char *f[7];
  int nf = 0;
  char *p = buf;
  while (nf < 7) {
    while (*p == ' ') p++;
    if (!*p || *p == '\n') break;
    f[nf++] = p;
    while (*p && *p != ' ' && *p != '\n') p++;
    if (*p) *p++ = 0;
  }
  if (nf != 7) return;
  /* Epoch and images dir: no "..", no absolute path, so the state cannot leave R. */
  for (char *c = f[0]; *c; c++) if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z'))) return;
  if (f[3][0] == '/' || has_sub(f[3], slen(f[3]), "..")) return;
  g.on_miss = (f[1][0] == 'w') ? MISS_WAIT : MISS_ORIGINAL;
  unsigned long ms = 0;
  for (char *c = f[2]; *c >= '0' && *c <= '9'; c++) ms = ms * 10 + (unsigned long)(*c - '0');
  g.wait_ms = ms > 60000 ? 60000 : ms;
  at = 0;
  if (!put_n(g.epoch_dir, sizeof g.epoch_dir, &at, FSCACHE_HOOK_ROOT, root_len()) || !put(g.epoch_dir, sizeof g.epoch_dir, &at, "/") ||
      !put(g.epoch_dir, sizeof g.epoch_dir, &at, f[3]) || !put(g.epoch_dir, sizeof g.epoch_dir, &at, "/") ||
      !put(g.epoch_dir, sizeof g.epoch_dir, &at, f[0]))
    return;
  at = 0;
  if (!put(g.libdirs, sizeof g.libdirs, &at, f[4])) g.libdirs[0] = 0;
  at = 0;
  if (!put_n(g.sock, sizeof g.sock, &at, FSCACHE_HOOK_ROOT, root_len()) || !put(g.sock, sizeof g.sock, &at, "/run/fscache/hook.sock")) g.sock[0] = 0;
  /* The real tree's device: a library on another device may have been found through the view. No
     real tree (a root without fscache's link): no mapping, every library keyed as found. */
  if (under_root(g.real_dir, sizeof g.real_dir, f[5]) && under_root(g.view_dir, sizeof g.view_dir, f[6]) &&
      sys_stat(g.real_dir, &st, 0) == 0 && (st.mode & S_IFMT) == S_IFDIR)
    g.real_dev = st.dev;
  g.ok = 1;
  check_epoch_dir();
}

/* ---- resolving a bare name at LA_SER_ORIG exactly as the loader would, or not at all ----
 * Only in the one case where the loader's answer is the ld.so.cache entry and nothing else can
 * come first: LD_LIBRARY_PATH unset, no object of the namespace has DT_RPATH (the requester's
 * loaders and the main program would be searched), the requester has no DT_RUNPATH and neither it
 * nor the main program has DF_1_NODEFLIB, and the cache has exactly one entry for the name, for
 * this architecture's libc6 and without hwcaps (a glibc-hwcaps subdirectory entry would depend on the CPU).
 * Anything else: the name goes on unchanged and the candidate is redirected at a later stage. */
static struct {
  int env_ok;                   /* LD_LIBRARY_PATH known to be unset (read in la_version) */
  int tried;                    /* load_cache ran (it maps the cache at the first bare name that needs it) */
  int usable;                   /* cache mapped, LD_LIBRARY_PATH known to be unset */
  const unsigned char *map;
  unsigned long len;
  struct kstat id;              /* the cache file we mapped: a rewritten cache is not ours to read */
} c;

/* Is LD_LIBRARY_PATH in the process's initial environment (what ld.so read)? 1 yes/unknown, 0 no. */
static int ld_library_path_set(void) {
  int fd = sys_open("/proc/self/environ", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 1;
  static const char want[] = "LD_LIBRARY_PATH=";
  unsigned long pos = 0;
  int match = 1, found = 0;
  char buf[4096];
  long n;
  while (!found && (n = sys_read(fd, buf, sizeof buf)) > 0) {
    for (long i = 0; i < n; i++) {
      if (buf[i] == 0) {
        if (match && pos >= sizeof want - 1) { found = 1; break; }
        pos = 0;
        match = 1;
      } else {
        if (pos < sizeof want - 1 && buf[i] != want[pos]) match = 0;
        pos++;
      }
    }
  }
  if (!found && match && pos >= sizeof want - 1) found = 1;
  sys_close(fd);
  return found;
}

static void load_cache(void) {
  c.tried = 1;
  if (!c.env_ok) return;
  int fd = sys_open("/etc/ld.so.cache", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  if (sys_fstat(fd, &c.id) == 0 && c.id.size >= 48 && c.id.size < (64l << 20)) {
    long m = sc6(SYS_mmap, 0, c.id.size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m > 0) {
      c.map = (const unsigned char *)m;
      c.len = (unsigned long)c.id.size;
      c.usable = 1;
    }
  }
  sys_close(fd);
}

static unsigned int rd32(const unsigned char *p) { return p[0] | p[1] << 8 | p[2] << 16 | (unsigned int)p[3] << 24; }

/* The single ld.so.cache path for `name`, or 0. */
static const char *cache_lookup(const char *name) {
  if (!c.tried) load_cache();
  if (!c.usable) return 0;
  struct kstat now;
  if (sc4(SYS_newfstatat, AT_FDCWD, (long)"/etc/ld.so.cache", (long)&now, 0) != 0 || now.ino != c.id.ino || now.dev != c.id.dev ||
      now.size != c.id.size || now.mtime != c.id.mtime || now.mtime_ns != c.id.mtime_ns)
    return 0;
  const unsigned char *b = c.map;
  static const char magic[] = "glibc-ld.so.cache1.1";
  for (unsigned long i = 0; i < sizeof magic - 1; i++) if (b[i] != (unsigned char)magic[i]) return 0;
  unsigned long n = rd32(b + 20);
  if (n > (c.len - 48) / 24) return 0;
  const char *found = 0;
  for (unsigned long i = 0; i < n; i++) {
    const unsigned char *e = b + 48 + 24 * i;
    unsigned long key = rd32(e + 4), val = rd32(e + 8);
    if (key >= c.len || val >= c.len) return 0;
    unsigned long j = 0;
    while (key + j < c.len && name[j] && b[key + j] == (unsigned char)name[j]) j++;
    if (name[j] || key + j >= c.len || b[key + j]) continue;
    /* This architecture's libc6 entries only; any hwcap bits: CPU-dependent choice. */
    if (rd32(e) != CACHE_FLAGS_NATIVE || rd32(e + 16) || rd32(e + 20) || found) return 0;
    unsigned long k = val;
    while (k < c.len && b[k]) k++;
    if (k >= c.len || b[val] != '/') return 0;
    found = (const char *)b + val;
  }
  return found;
}

struct lmap { unsigned long l_addr; char *l_name; Elf64_Dyn *l_ld; struct lmap *l_next, *l_prev; }; /* <link.h>'s public part */

/* 1 if this object's dynamic section could make the loader look anywhere but the cache. */
static int dyn_blocks(const Elf64_Dyn *d, int strict) {
  for (int i = 0; d && i < 1024 && d[i].d_tag != DT_NULL; i++) {
    if (d[i].d_tag == DT_RPATH) return 1;
    if (strict && d[i].d_tag == DT_RUNPATH) return 1;
    if (strict && d[i].d_tag == DT_FLAGS_1 && (d[i].d_un.d_val & DF_1_NODEFLIB)) return 1;
  }
  return 0;
}

static const char *resolve_bare(const char *name, const uintptr_t *cookie) {
  if (!c.env_ok || !cookie || !*cookie) return 0;
  for (const char *p = name; *p; p++) if (*p == '/' || *p == '$') return 0;
  /* The audit cookie of an object is its link_map unless an auditor's la_objopen changed it (ours has none). */
  const struct lmap *req = (const struct lmap *)*cookie, *head = req;
  for (int i = 0; head->l_prev && i < 65536; i++) head = head->l_prev;
  if (head->l_prev) return 0;
  int i = 0;
  for (const struct lmap *l = head; l; l = l->l_next)
    if (++i > 65536 || dyn_blocks(l->l_ld, l == req || l == head)) return 0;
  return cache_lookup(name);
}

EXPORT unsigned int la_version(unsigned int version) {
  load_epoch();
  /* Now, while the environment is the one ld.so read (a program may later overwrite it in place). */
  if (g.ok) c.env_ok = !ld_library_path_set();
  /* 0 would disable the auditor; we use nothing newer than version 2's la_objsearch. */
  return version < LAV_CURRENT_OURS ? version : LAV_CURRENT_OURS;
}

/* Does the library on fd use $ORIGIN in DT_RUNPATH/DT_RPATH? 1 yes, 0 no, -1 cannot tell. */
static int uses_origin(int fd) {
  Elf64_Ehdr eh;
  if (sys_pread(fd, &eh, sizeof eh, 0) != (long)sizeof eh) return -1;
  if (eh.e_ident[0] != 0x7f || eh.e_ident[1] != 'E' || eh.e_ident[2] != 'L' || eh.e_ident[3] != 'F') return -1;
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB || eh.e_machine != EM_NATIVE ||
      eh.e_type != ET_DYN || eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum > 32)
    return -1;
  /* Small buffers: la_objsearch may run on a thread with a small stack (dlopen from a thread). */
  Elf64_Phdr ph[32];
  long want = (long)(eh.e_phnum * sizeof(Elf64_Phdr));
  if (sys_pread(fd, ph, (unsigned long)want, (long)eh.e_phoff) != want) return -1;
  const Elf64_Phdr *dyn = 0;
  for (int i = 0; i < eh.e_phnum; i++) if (ph[i].p_type == PT_DYNAMIC) dyn = &ph[i];
  if (!dyn) return 0;
  unsigned long dn = dyn->p_filesz / sizeof(Elf64_Dyn);
  if (dn > 1024) return -1;
  unsigned long strtab = 0, paths[2];
  int np = 0, end = 0;
  for (unsigned long base = 0; base < dn && !end; base += 32) {
    Elf64_Dyn d[32];
    unsigned long k = dn - base < 32 ? dn - base : 32;
    long want_d = (long)(k * sizeof(Elf64_Dyn));
    if (sys_pread(fd, d, (unsigned long)want_d, (long)(dyn->p_offset + base * sizeof(Elf64_Dyn))) != want_d) return -1;
    for (unsigned long i = 0; i < k; i++) {
      if (d[i].d_tag == DT_NULL) { end = 1; break; }
      if (d[i].d_tag == DT_STRTAB) strtab = d[i].d_un.d_ptr;
      else if ((d[i].d_tag == DT_RUNPATH || d[i].d_tag == DT_RPATH) && np < 2) paths[np++] = d[i].d_un.d_val;
    }
  }
  if (np == 0) return 0;
  long stroff = -1;
  for (int i = 0; i < eh.e_phnum; i++)
    if (ph[i].p_type == PT_LOAD && strtab >= ph[i].p_vaddr && strtab < ph[i].p_vaddr + ph[i].p_filesz)
      stroff = (long)(strtab - ph[i].p_vaddr + ph[i].p_offset);
  if (stroff < 0) return -1;
  for (int k = 0; k < np; k++) {
    char s[512];
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
   something is there but not trusted (planted): load the original without asking; NONE: a miss.
   `out` (RET_MAX, static: no large buffer on a thread's small stack) holds the image's path on IMAGE. */
enum { NONE = 0, IMAGE = 1, PASS = 2, UNTRUSTED = 3 };
static int lookup(const char *key, char *out) {
  if (g.dir == DIR_MISSING) check_epoch_dir();
  if (g.dir == DIR_UNTRUSTED) return UNTRUSTED;
  if (g.dir == DIR_MISSING) return NONE;
  for (int i = 0; i < 2; i++) {
    unsigned long at = 0;
    if (!put(out, RET_MAX, &at, g.epoch_dir) || !put(out, RET_MAX, &at, "/") || !put(out, RET_MAX, &at, key) ||
        !put(out, RET_MAX, &at, i == 0 ? ".so" : ".pass"))
      return NONE;
    struct kstat st;
    int r = sys_stat(out, &st, AT_SYMLINK_NOFOLLOW);
    if (r == -ENOENT_) continue;
    /* A regular file (a symlink planted under the key is S_IFLNK here), root-owned, not writable by others. */
    if (r != 0 || !trusted(&st, S_IFREG)) return UNTRUSTED;
    /* The daemon seals an image with its size as its mtime: a truncated one would SIGBUS the launch
       (flash rot); load the original and ask, and the daemon makes it again. */
    if (i == 0 && (unsigned long)st.size != st.mtime) return NONE;
    return i == 0 ? IMAGE : PASS;
  }
  return NONE;
}

static int send_all(int s, const char *b, unsigned long n) {
  for (unsigned long sent = 0; sent < n;) {
    long k = sc6(SYS_sendto, s, (long)(b + sent), (long)(n - sent), MSG_NOSIGNAL, 0, 0);
    if (k <= 0) return 0;
    sent += (unsigned long)k;
  }
  return 1;
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
  char req[128]; /* the numbers; the path is sent from where it is (no copy on a small stack) */
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
      !put_dec(req, sizeof req, &at, st->mtime * 1000000000ul + st->mtime_ns) || !put(req, sizeof req, &at, " "))
    goto out;
  const char *rel = path + root_len();
  if (!send_all(s, req, at) || !send_all(s, rel, slen(rel)) || !send_all(s, "\n", 1)) goto out;
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
  unsigned long rl = root_len();
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

/* The real tree's name of a library found through the view; static: no large buffer on a small stack. */
static char real_name[RET_MAX];

/*
 * Images are keyed by the real tree's file: the view's device number changes with each mount, and
 * the daemon never looks through the view. So a library on another device than the real tree (`st`,
 * found as `path`; `fd` open on it or -1) is asked about where the kernel's own resolution led
 * (/proc/self/fd: /lib -> usr/lib -> the view needs no resolving here): under the view mount it is
 * the real tree's file at the same relative path, which must be a regular file with the size and
 * mtime (seconds) the view reported. Returns the name to ask by (`path`, or
 * real_name with *st its identity), or 0: cannot tell, load the original. `scratch`: RET_MAX bytes.
 */
static const char *on_real_side(const char *path, int fd, struct kstat *st, char *scratch) {
  if (!g.real_dev || st->dev == g.real_dev) return path;
  int own = fd < 0;
  if (own && (fd = sys_open(path, O_PATH | O_CLOEXEC)) < 0) return 0;
  char link[40];
  unsigned long at = 0;
  long n = -1;
  if (put(link, sizeof link, &at, "/proc/self/fd/") && put_dec(link, sizeof link, &at, (unsigned long)fd))
    n = sc4(SYS_readlinkat, AT_FDCWD, (long)link, (long)scratch, RET_MAX - 1);
  if (own) sys_close(fd);
  if (n <= 0 || n >= RET_MAX - 1) return 0; /* no /proc (early boot), or too long: the original */
  scratch[n] = 0;
  unsigned long vl = slen(g.view_dir);
  for (unsigned long i = 0; i < vl; i++) if (scratch[i] != g.view_dir[i]) return path; /* elsewhere: as found */
  if (scratch[vl] != '/') return path;
  at = 0;
  if (!put(real_name, sizeof real_name, &at, g.real_dir) || !put(real_name, sizeof real_name, &at, scratch + vl)) return 0;
  struct kstat rs;
  /* The file the view showed, as far as attributes every session passes through tell (the libfuse2
     session numbers its own inodes; mtime is at most ms-precise there). */
  if (sys_stat(real_name, &rs, AT_SYMLINK_NOFOLLOW) != 0 || (rs.mode & S_IFMT) != S_IFREG || rs.size != st->size || rs.mtime != st->mtime)
    return 0;
  *st = rs;
  return real_name;
}

/* The image path for the library named `path`, copied into `out`, or 0 for "load the original". */
static char *image_for(const char *path, char *out, int at_orig) {
  /* Images exist only for libraries in the library dirs (the daemon's rule): the system's other
     libraries (libc, ...) then cost no syscall at all. A name outside them that is a symlink into
     them loads the original: fail open. */
  if (!in_library_dirs(path)) return 0;
  struct kstat st;
  int ok;
  const char *name = 0;
  if (at_orig) {
    int fd = sys_open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0; /* the loader will not find it either: nothing to say */
    ok = sys_fstat(fd, &st) == 0 && (st.mode & S_IFMT) == S_IFREG;
    /* At LA_SER_ORIG l_name becomes the image; $ORIGIN would then point into the images dir. */
    if (ok && uses_origin(fd) != 0) ok = 0;
    if (ok) name = on_real_side(path, fd, &st, out);
    sys_close(fd);
  } else {
    /* A search-path candidate: one stat, following links as the loader's open will (most candidates
       are probes that do not exist). */
    ok = sys_stat(path, &st, 0) == 0 && (st.mode & S_IFMT) == S_IFREG;
    if (ok) name = on_real_side(path, -1, &st, out);
  }
  if (!ok || !name) return 0;
  char key[96];
  unsigned long k = 0;
  put_hex(key, sizeof key, &k, st.dev); put(key, sizeof key, &k, "-");
  put_hex(key, sizeof key, &k, st.ino); put(key, sizeof key, &k, "-");
  put_hex(key, sizeof key, &k, (unsigned long)st.size); put(key, sizeof key, &k, "-");
  put_hex(key, sizeof key, &k, st.mtime * 1000000000ul + st.mtime_ns);
  int found = lookup(key, out);
  /* PASS: a library the daemon refused is marked so that launches do not ask again. UNTRUSTED:
     planted state is never an occasion to ask (nor to wait). */
  if (found != IMAGE && !(found == NONE && ask_daemon(name, &st) && lookup(key, out) == IMAGE)) return 0;
  return out; /* lookup left the image's path there */
}

EXPORT char *la_objsearch(const char *name, uintptr_t *cookie, unsigned int flag) {
  if (!g.ok || !name) return (char *)name;
  int orig = (flag & LA_SER_ORIG) != 0;
  const char *path = name;
  if (name[0] != '/') {
    /* A bare name: only at LA_SER_ORIG and only when the cache alone decides (see resolve_bare). */
    path = orig ? resolve_bare(name, cookie) : 0;
    if (!path) return (char *)name;
  }
  char *img = image_for(path, orig ? ret_orig : ret_later, orig);
  return img ? img : (char *)name;
}
