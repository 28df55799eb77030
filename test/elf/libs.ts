/**
 * Builds the real libraries the randomizer tests run against, from source, at test time, and
 * caches them (keyed by source version and flags) under .cache/elf-libs (or $FSCACHE_LIB_CACHE).
 * Every library is built with the flags that make it randomizable:
 *   -O2 -fPIC -ffunction-sections -g   and   -Wl,--emit-relocs
 * zlib, SQLite and Lua can also be built at -Os or -O1 in place of -O2 (issue 16: packed layouts); such a
 * build is cached as NAME-Os-KEY (NAME-O1-KEY), the key including the flags; -O2 builds keep their names and keys.
 * Builds run through `make -j2` (the machine has 2 cores and is shared).
 * A builder that cannot run (no deb-src, no compiler) returns { skip: reason } so that tests
 * skip loudly instead of passing silently.
 */
import { execFileSync, ExecFileSyncOptions } from 'child_process';
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';

/** The repository root (also when this file runs compiled from dist/ for the bench). */
function findRepo(): string {
  for (let d = __dirname; d !== path.dirname(d); d = path.dirname(d)) {
    if (fs.existsSync(path.join(d, 'package.json')) && fs.existsSync(path.join(d, 'test', 'elf', 'fixtures'))) return d;
  }
  return path.resolve(__dirname, '..', '..');
}
export const REPO = findRepo();
export const CACHE = process.env.FSCACHE_LIB_CACHE ?? path.join(REPO, '.cache', 'elf-libs');
export const CFLAGS = '-O2 -fPIC -ffunction-sections -g';
export const LDFLAGS = '-Wl,--emit-relocs';
export const FIXTURES = path.join(REPO, 'test', 'elf', 'fixtures');

/** The optimisation level a test library's own code is compiled at (its test programs stay at -O2). */
export type OptLevel = '-O2' | '-Os' | '-O1';
/** CFLAGS with `opt` in place of -O2 (the same string for -O2, so -O2 cache keys are unchanged). */
export function cflagsAt(opt: OptLevel): string {
  return CFLAGS.replace('-O2', opt);
}
/** The cache name: unchanged for -O2, NAME-Os / NAME-O1 otherwise. */
function nameAt(name: string, opt: OptLevel): string {
  return opt === '-O2' ? name : `${name}${opt}`;
}

export type Built<T> = ({ ok: true } & T) | { ok: false; skip: string };

export interface ZlibBuild { dir: string; lib: string; example: string; minigzip: string }
export interface SqliteBuild { dir: string; lib: string; driver: string }
export interface CxxBuild { dir: string; lib: string; test: string }
export interface LuaBuild { dir: string; lib: string; lua: string }
export interface Bzip2Build { dir: string; lib: string; bzip2: string; src: string }

const quiet: ExecFileSyncOptions = { stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20 };

function sh(cmd: string, cwd: string, timeoutMs = 600_000): string {
  return execFileSync('sh', ['-c', cmd], { ...quiet, cwd, timeout: timeoutMs }).toString();
}

function keyOf(...parts: string[]): string {
  return createHash('sha256').update(parts.join('\0')).digest('hex').slice(0, 16);
}

/** Runs `build` into a fresh directory unless a finished build for `key` is cached. */
function cached<T>(name: string, key: string, build: (dir: string) => T): T {
  const dir = path.join(CACHE, `${name}-${key}`);
  const done = path.join(dir, '.done.json');
  if (fs.existsSync(done)) return JSON.parse(fs.readFileSync(done, 'utf8')) as T;
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const res = build(dir);
  fs.writeFileSync(done, JSON.stringify(res));
  return res;
}

function errText(e: unknown): string {
  const x = e as { stderr?: Buffer; message?: string };
  return ((x.stderr?.toString() ?? '') + (x.message ?? String(e))).trim().split('\n').slice(-3).join(' | ');
}

/** `apt-get source` into dir; returns the unpacked source directory. */
function aptSource(pkg: string, dir: string): string {
  sh(`apt-get source ${pkg}`, dir);
  const sub = fs.readdirSync(dir).find((n) => fs.statSync(path.join(dir, n)).isDirectory());
  if (!sub) throw new Error(`apt-get source ${pkg} unpacked nothing`);
  return path.join(dir, sub);
}

function srcVersion(pkg: string): string {
  const out = execFileSync('apt-cache', ['showsrc', pkg], quiet).toString();
  const m = /^Version: (.+)$/m.exec(out);
  if (!m) throw new Error(`no source package ${pkg} (is a deb-src entry configured?)`);
  return m[1];
}

/** A Makefile compiling each C source to an object with the randomization flags, then linking. */
function makefile(objs: { src: string; obj: string; cc: string; flags: string }[], links: { out: string; cmd: string; deps: string[] }[]): string {
  const lines = [`all: ${links.map((l) => l.out).join(' ')}`, ''];
  for (const o of objs) lines.push(`${o.obj}: ${o.src}`, `\t${o.cc} ${o.flags} -c $< -o $@`, '');
  for (const l of links) lines.push(`${l.out}: ${l.deps.join(' ')}`, `\t${l.cmd}`, '');
  return lines.join('\n');
}

export function buildZlib(opt: OptLevel = '-O2'): Built<ZlibBuild> {
  const cflags = cflagsAt(opt);
  try {
    const version = srcVersion('zlib');
    return { ok: true, ...cached(nameAt('zlib', opt), keyOf(version, cflags, LDFLAGS, 'v1'), (dir) => {
      const src = aptSource('zlib', dir);
      const names = ['adler32', 'crc32', 'deflate', 'infback', 'inffast', 'inflate', 'inftrees', 'trees', 'zutil', 'compress', 'uncompr', 'gzclose', 'gzlib', 'gzread', 'gzwrite'];
      const flags = `${cflags} -D_LARGEFILE64_SOURCE=1 -DHAVE_HIDDEN -I${src}`;
      const objs = names.map((n) => ({ src: path.join(src, `${n}.c`), obj: path.join(dir, `${n}.o`), cc: 'gcc', flags }));
      const lib = path.join(dir, 'libz.so.1');
      fs.writeFileSync(path.join(dir, 'Makefile'), makefile(objs, [
        { out: lib, deps: objs.map((o) => o.obj), cmd: `gcc -shared ${LDFLAGS} -Wl,-soname,libz.so.1 -Wl,--version-script,${src}/zlib.map -o $@ $^` },
        { out: path.join(dir, 'example'), deps: [lib], cmd: `gcc -O2 -g -I${src} ${src}/test/example.c -o $@ -L${dir} -l:libz.so.1` },
        { out: path.join(dir, 'minigzip'), deps: [lib], cmd: `gcc -O2 -g -I${src} ${src}/test/minigzip.c -o $@ -L${dir} -l:libz.so.1` },
      ]));
      sh('make -j2', dir);
      return { dir, lib, example: path.join(dir, 'example'), minigzip: path.join(dir, 'minigzip') };
    }) };
  } catch (e) {
    return { ok: false, skip: `zlib (${opt}) could not be built from its Debian source package: ${errText(e)}` };
  }
}

export const SQLITE_C = path.join(REPO, 'node_modules', 'better-sqlite3', 'deps', 'sqlite3', 'sqlite3.c');

export function buildSqlite(opt: OptLevel = '-O2'): Built<SqliteBuild> {
  const cflags = cflagsAt(opt);
  try {
    if (!fs.existsSync(SQLITE_C)) throw new Error(`${SQLITE_C} not found`);
    const driverSrc = path.join(FIXTURES, 'sqlite_driver.c');
    const key = keyOf(createHash('sha256').update(fs.readFileSync(SQLITE_C)).digest('hex'), fs.readFileSync(driverSrc, 'utf8'), cflags, LDFLAGS, 'v1');
    return { ok: true, ...cached(nameAt('sqlite', opt), key, (dir) => {
      const inc = path.dirname(SQLITE_C);
      const lib = path.join(dir, 'libsqlite3.so.0');
      const obj = path.join(dir, 'sqlite3.o');
      fs.writeFileSync(path.join(dir, 'Makefile'), makefile(
        [{ src: SQLITE_C, obj, cc: 'gcc', flags: `${cflags} -DSQLITE_ENABLE_MATH_FUNCTIONS -DSQLITE_ENABLE_FTS5 -DSQLITE_ENABLE_RTREE` }],
        [
          { out: lib, deps: [obj], cmd: `gcc -shared ${LDFLAGS} -Wl,-soname,libsqlite3.so.0 -o $@ $^ -lm -lpthread` },
          { out: path.join(dir, 'driver'), deps: [lib], cmd: `gcc -O2 -g -I${inc} ${driverSrc} -o $@ -L${dir} -l:libsqlite3.so.0` },
        ],
      ));
      sh('make -j2', dir, 900_000);
      return { dir, lib, driver: path.join(dir, 'driver') };
    }) };
  } catch (e) {
    return { ok: false, skip: `SQLite (${opt}) could not be built from the amalgamation: ${errText(e)}` };
  }
}

export function buildCxx(): Built<CxxBuild> {
  try {
    const files = ['thrower.cc', 'interp.c', 'thrower_test.cc', 'thrower.h'].map((f) => path.join(FIXTURES, f));
    const key = keyOf(...files.map((f) => fs.readFileSync(f, 'utf8')), CFLAGS, LDFLAGS, 'v1');
    return { ok: true, ...cached('cxx', key, (dir) => {
      const lib = path.join(dir, 'libthrower.so');
      const objs = [
        { src: files[0], obj: path.join(dir, 'thrower.o'), cc: 'g++', flags: CFLAGS },
        { src: files[1], obj: path.join(dir, 'interp.o'), cc: 'gcc', flags: CFLAGS },
      ];
      fs.writeFileSync(path.join(dir, 'Makefile'), makefile(objs, [
        { out: lib, deps: objs.map((o) => o.obj), cmd: `g++ -shared ${LDFLAGS} -Wl,-soname,libthrower.so -o $@ $^` },
        { out: path.join(dir, 'thrower_test'), deps: [lib], cmd: `g++ -O2 -g -I${FIXTURES} ${files[2]} -o $@ -L${dir} -lthrower` },
      ]));
      sh('make -j2', dir);
      return { dir, lib, test: path.join(dir, 'thrower_test') };
    }) };
  } catch (e) {
    return { ok: false, skip: `C++ fixture library could not be built: ${errText(e)}` };
  }
}

export function buildLua(opt: OptLevel = '-O2'): Built<LuaBuild> {
  const cflags = cflagsAt(opt);
  try {
    const version = srcVersion('lua5.4');
    return { ok: true, ...cached(nameAt('lua', opt), keyOf(version, cflags, LDFLAGS, 'v2'), (dir) => {
      const src = aptSource('lua5.4', dir);
      const srcDir = path.join(src, 'src');
      // Debian's luaconf.h includes a header debian/rules generates.
      fs.writeFileSync(path.join(srcDir, 'lua5.4-deb-multiarch.h'), '#define DEB_HOST_MULTIARCH "x86_64-linux-gnu"\n');
      const cs = fs.readdirSync(srcDir).filter((f) => f.endsWith('.c') && f !== 'lua.c' && f !== 'luac.c' && f !== 'onelua.c');
      const flags = `${cflags} -DLUA_COMPAT_5_3 -DLUA_USE_LINUX`;
      const objs = cs.map((f) => ({ src: path.join(srcDir, f), obj: path.join(dir, f.replace(/\.c$/, '.o')), cc: 'gcc', flags }));
      const lib = path.join(dir, 'liblua5.4.so.0');
      fs.writeFileSync(path.join(dir, 'Makefile'), makefile(objs, [
        { out: lib, deps: objs.map((o) => o.obj), cmd: `gcc -shared ${LDFLAGS} -Wl,-soname,liblua5.4.so.0 -o $@ $^ -lm -ldl` },
        { out: path.join(dir, 'lua'), deps: [lib], cmd: `gcc -O2 -g -DLUA_USE_LINUX -I${srcDir} ${srcDir}/lua.c -o $@ -L${dir} -l:liblua5.4.so.0 -lm -ldl` },
      ]));
      sh('make -j2', dir);
      return { dir, lib, lua: path.join(dir, 'lua') };
    }) };
  } catch (e) {
    return { ok: false, skip: `Lua 5.4 (${opt}) could not be built from its Debian source package: ${errText(e)}` };
  }
}

/**
 * Runs a program with LD_LIBRARY_PATH pointing at `libDir` (so it loads the randomized copy), in
 * `libDir` as working directory (zlib's `example` writes foo.gz there, not in the repository).
 */
export function runWith(libDir: string, file: string, args: string[], input?: Buffer | string, extraEnv: Record<string, string> = {}): { stdout: string; status: number } {
  try {
    const out = execFileSync(file, args, {
      cwd: libDir, env: { ...process.env, LD_LIBRARY_PATH: libDir, ...extraEnv }, input, maxBuffer: 256 << 20, timeout: 120_000,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    return { stdout: out.toString('latin1'), status: 0 };
  } catch (e) {
    const x = e as { stdout?: Buffer; stderr?: Buffer; status?: number; signal?: string };
    return { stdout: (x.stdout?.toString('latin1') ?? '') + (x.stderr?.toString() ?? '') + (x.signal ? ` [signal ${x.signal}]` : ''), status: x.status ?? 128 };
  }
}

/** A fresh temporary directory under the cache (outputs of one test). */
export function tempDir(name: string): string {
  const d = path.join(CACHE, 'tmp', `${name}-${process.pid}`);
  fs.rmSync(d, { recursive: true, force: true });
  fs.mkdirSync(d, { recursive: true });
  return d;
}

/** Skips loudly: the reason is printed, and the test shows as skipped, never as passed. */
export function announceSkip(what: string, reason: string): void {
  // eslint-disable-next-line no-console
  console.warn(`SKIP ${what}: ${reason}`);
}

export interface SmallBuild { dir: string; lib: string }

/**
 * A small randomizable library for the fuzz test (interp.c: jump tables, computed goto, calls),
 * built without -g so that each fuzz input is cheap to process.
 */
export function buildSmall(): Built<SmallBuild> {
  try {
    const src = path.join(FIXTURES, 'interp.c');
    const key = keyOf(fs.readFileSync(src, 'utf8'), 'small-v1');
    return { ok: true, ...cached('small', key, (dir) => {
      const lib = path.join(dir, 'libsmall.so');
      sh(`gcc -O2 -fPIC -ffunction-sections -I${FIXTURES} -shared ${LDFLAGS} -o ${lib} ${src}`, dir);
      return { dir, lib };
    }) };
  } catch (e) {
    return { ok: false, skip: `small fixture library could not be built: ${errText(e)}` };
  }
}

/** bzip2 1.0.8 from Debian's source package: libbz2.so.1.0 and the `bzip2` program linked against it. */
export function buildBzip2(): Built<Bzip2Build> {
  try {
    const version = srcVersion('bzip2');
    return { ok: true, ...cached('bzip2', keyOf(version, CFLAGS, LDFLAGS, 'v1'), (dir) => {
      const src = aptSource('bzip2', dir);
      const names = ['blocksort', 'huffman', 'crctable', 'randtable', 'compress', 'decompress', 'bzlib'];
      const flags = `${CFLAGS} -D_FILE_OFFSET_BITS=64 -I${src}`;
      const objs = names.map((n) => ({ src: path.join(src, `${n}.c`), obj: path.join(dir, `${n}.o`), cc: 'gcc', flags }));
      const lib = path.join(dir, 'libbz2.so.1.0');
      fs.writeFileSync(path.join(dir, 'Makefile'), makefile(objs, [
        { out: lib, deps: objs.map((o) => o.obj), cmd: `gcc -shared ${LDFLAGS} -Wl,-soname,libbz2.so.1.0 -o $@ $^` },
        { out: path.join(dir, 'bzip2'), deps: [lib], cmd: `gcc -O2 -g -D_FILE_OFFSET_BITS=64 -I${src} ${src}/bzip2.c -o $@ -L${dir} -l:libbz2.so.1.0` },
      ]));
      sh('make -j2', dir);
      return { dir, lib, bzip2: path.join(dir, 'bzip2'), src };
    }) };
  } catch (e) {
    return { ok: false, skip: `bzip2 could not be built from its Debian source package: ${errText(e)}` };
  }
}

export interface FixtureBuild { dir: string; lib: string; main?: string }

/**
 * A small library from fixture sources (and optionally a main program linked against it), with
 * the randomization flags plus `extraFlags`.
 */
export function buildFixture(name: string, sources: string[], mainSource?: string, extraFlags = ''): Built<FixtureBuild> {
  try {
    const files = [...sources, ...(mainSource ? [mainSource] : [])].map((f) => path.join(FIXTURES, f));
    const key = keyOf(...files.map((f) => fs.readFileSync(f, 'utf8')), CFLAGS, LDFLAGS, extraFlags, 'fx-v1');
    return { ok: true, ...cached(`fx-${name}`, key, (dir) => {
      const lib = path.join(dir, `lib${name}.so`);
      sh(`gcc ${CFLAGS} ${extraFlags} -shared ${LDFLAGS} -o ${lib} ${files.slice(0, sources.length).join(' ')}`, dir);
      let main: string | undefined;
      if (mainSource) {
        main = path.join(dir, `${name}_main`);
        sh(`gcc -O2 -o ${main} ${files[files.length - 1]} -L${dir} -l${name}`, dir);
      }
      return { dir, lib, main };
    }) };
  } catch (e) {
    return { ok: false, skip: `fixture ${name} could not be built: ${errText(e)}` };
  }
}
