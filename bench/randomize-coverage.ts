/**
 * Coverage beyond the test suite: libraries from Debian source packages (autotools or CMake), built with the
 * randomization flags, whose own `make check` suites run against randomized copies (the randomized
 * .so is swapped in place of the built one, which libtool's wrappers or CMake's build RPATH then
 * load; the original is restored afterwards).
 *
 *   npx tsc -p . && node dist/bench/randomize-coverage.js [--seeds 2] [--only SOURCE[,SOURCE...]] [--as-shipped] [--os]
 *
 * --os adds an -Os column (issue 16): each selected package is built a second time, in its own
 * cov-SOURCE[-VARIANT]-Os directory, with -Os in place of -O2 in CFLAGS, and its suite run the same way.
 *
 * Slow (configure + build + make check per package, up to a few minutes each on 2 cores; libffi's
 * DejaGnu suite about 13): not part of the jest run. Prints markdown for bench/RESULTS.md. Needs,
 * beyond scripts/setup.sh: `apt-get install dejagnu m4 autoconf automake libtool cmake libgmp-dev
 * zlib1g-dev pkg-config` (deb-src enabled, as setup.sh does, for `apt-get source`).
 */
import { execFileSync } from 'child_process';
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { ElfFormatError, ElfRefusal, randomizeBytes } from '../elf';
import { CACHE, cflagsAt, LDFLAGS } from '../test/elf/libs';
import type { OptLevel } from '../test/elf/libs';

interface Pkg {
  source: string; subdir: string; libDir: string; libPattern: RegExp; configure: string; kind: 'autotools' | 'cmake';
  /** A second configuration of the same source: built in its own cov-SOURCE-VARIANT directory, named in the row. */
  variant?: string;
  /** Shell command run in the source directory before configuring (sources shipped without a configure script). */
  preConfigure?: string;
  /** Shell command run in the build directory after configuring. */
  postConfigure?: string;
  /**
   * A check of our own, for packages whose own test binaries do not load the shared library
   * (expat's runtests compile the library sources in): returns a digest of observable output,
   * compared between the original and the randomized library.
   */
  ownCheck?: (buildDir: string, srcRoot: string) => string;
}

/** xmlwf (linked against libexpat.so.1) over XML files: canonical output (-d) and messages, hashed. */
function xmlwfCheck(buildDir: string, srcRoot: string): string {
  const files = [
    ...fs.readdirSync(path.join(srcRoot, '..', 'testdata', 'largefiles')).filter((f) => f.endsWith('.xml')).map((f) => path.join(srcRoot, '..', 'testdata', 'largefiles', f)),
    ...sh('find /usr/share -name "*.xml" -size +1k 2>/dev/null | sort | head -300', '/').out.split('\n').filter(Boolean),
  ];
  const out = fs.mkdtempSync(path.join(CACHE, 'xmlwf-'));
  const h = createHash('sha256');
  try {
    files.forEach((f, i) => {
      const d = path.join(out, String(i));
      fs.mkdirSync(d);
      const r = sh(`${path.join(buildDir, 'xmlwf', 'xmlwf')} -d ${d} '${f}'`, buildDir);
      h.update(r.out);
      for (const n of fs.readdirSync(d)) h.update(fs.readFileSync(path.join(d, n)));
    });
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
  return `xmlwf over ${files.length} XML files, output digest ${h.digest('hex').slice(0, 16)}`;
}

/**
 * libyaml's own suite is two small tests: also its parser, emitter and dumper tools over YAML and JSON
 * files (YAML is a superset of JSON; npm's package.json files give hundreds), the outputs hashed.
 */
function yamlCheck(buildDir: string, srcRoot: string): string {
  const suite = summary(sh('make -j2 check', buildDir).out);
  const files = [
    ...['examples', 'regression-inputs'].flatMap((d) => fs.readdirSync(path.join(srcRoot, d)).map((f) => path.join(srcRoot, d, f))),
    ...sh('find /usr/share \\( -name "*.yml" -o -name "*.yaml" -o -name "*.json" \\) -size +1k 2>/dev/null | sort | head -150', '/').out.split('\n').filter(Boolean),
    // The trailing slash: in a worktree node_modules is a symlink, which find does not enter otherwise.
    ...sh(`find ${path.join(__dirname, '..', '..', 'node_modules')}/ -name package.json 2>/dev/null | sort | head -150`, '/').out.split('\n').filter(Boolean),
  ];
  const h = createHash('sha256');
  const t = (n: string) => path.join(buildDir, 'tests', n);
  for (const f of files) {
    for (const cmd of [`${t('run-parser-test-suite')} '${f}'`, `${t('run-parser-test-suite')} '${f}' | ${t('run-emitter-test-suite')}`,
      `${t('example-deconstructor')} < '${f}'`, `${t('example-reformatter')} < '${f}'`, `${t('run-dumper')} '${f}'`]) {
      const r = sh(cmd, buildDir);
      h.update(`${r.ok} ${r.out}`);
    }
  }
  return `${suite}; tools over ${files.length} files, output digest ${h.digest('hex').slice(0, 16)}`;
}

const PKGS: Pkg[] = [
  { kind: 'autotools', source: 'xz-utils', subdir: '', libDir: 'src/liblzma/.libs', libPattern: /^liblzma\.so\.\d+\.\d+\.\d+$/, configure: '--disable-static --disable-nls --disable-doc' },
  // Debian's expat source is the upstream git tree (no configure script): built with CMake, tests run by ctest.
  { kind: 'cmake', source: 'expat', subdir: 'expat', libDir: '.', libPattern: /^libexpat\.so\.\d+\.\d+\.\d+$/, configure: '-DEXPAT_BUILD_TESTS=ON -DEXPAT_BUILD_EXAMPLES=OFF -DEXPAT_BUILD_DOCS=OFF',
    // Debian's security patches test `#if XML_DTD == 1` (autotools defines it as 1, CMake as empty).
    postConfigure: "sed -i 's/^#define XML_DTD$/#define XML_DTD 1/; s/^#define XML_NS$/#define XML_NS 1/' expat_config.h",
    ownCheck: xmlwfCheck },
  // JIT (sljit) on: pcre2_jit_test and RunTest's -jit passes run code the library generates at run time.
  { kind: 'autotools', source: 'pcre2', subdir: '', libDir: '.libs', libPattern: /^libpcre2-8\.so\.\d+\.\d+\.\d+$/, configure: '--disable-static --enable-jit --enable-pcre2-16 --enable-pcre2-32' },
  // Hand-written x86-64 assembly (unix64.S, win64.S) with its own .eh_frame; DejaGnu suite. As Debian, with static
  // trampolines: a page of code that reads its data one page further (a page the library maps next to it at run
  // time), which the randomizer refuses. The variant without them randomizes the rest of the assembly.
  { kind: 'autotools', source: 'libffi', subdir: '', libDir: 'x86_64-pc-linux-gnu/.libs', libPattern: /^libffi\.so\.\d+\.\d+\.\d+$/, configure: '--disable-static --disable-docs' },
  { kind: 'autotools', source: 'libffi', variant: 'no-static-tramp', subdir: '', libDir: 'x86_64-pc-linux-gnu/.libs', libPattern: /^libffi\.so\.\d+\.\d+\.\d+$/, configure: '--disable-static --disable-docs --disable-exec-static-tramp' },
  // --enable-fat (as Debian): AES-NI, SHA-NI, PCLMUL assembly variants chosen at load time by CPUID. Built in
  // place as libnettle.so and libhogweed.so (the suite reaches them through .lib/ symlinks).
  { kind: 'autotools', source: 'nettle', subdir: '', libDir: '.', libPattern: /^libnettle\.so$/, configure: '--disable-static --enable-fat --disable-documentation' },
  { kind: 'autotools', source: 'nettle', subdir: '', libDir: '.', libPattern: /^libhogweed\.so$/, configure: '--disable-static --enable-fat --disable-documentation' },
  // mpn/ assembly; --enable-fat: per-CPU variants reached through a function table filled by CPUID on first use.
  // Debian's +dfsg source drops doc/ and patches configure.ac to match, without regenerating configure.
  { kind: 'autotools', source: 'gmp', subdir: '', libDir: '.libs', libPattern: /^libgmp\.so\.\d+\.\d+\.\d+$/, configure: '--disable-static --enable-fat', preConfigure: 'autoreconf -fi' },
  // Debian's source has no configure script. Assembly (salsa20, curve25519) and CPUID-dispatched implementations.
  // The two assembly files ask for 32-byte alignment, so every function at a multiple of 32 must keep it and no
  // permutation fits .text: the variant leaves them out (configure has no switch for that alone: its results are
  // edited in config.status), the C fallbacks and CPUID-dispatched C code remain.
  { kind: 'autotools', source: 'libsodium', subdir: '', libDir: 'src/libsodium/.libs', libPattern: /^libsodium\.so\.\d+\.\d+\.\d+$/, configure: '--disable-static', preConfigure: 'autoreconf -fi' },
  { kind: 'autotools', source: 'libsodium', variant: 'no-asm-files', subdir: '', libDir: 'src/libsodium/.libs', libPattern: /^libsodium\.so\.\d+\.\d+\.\d+$/, configure: '--disable-static', preConfigure: 'autoreconf -fi',
    postConfigure: `sed -i -e 's/^S\\["HAVE_\\(AMD64\\|AVX\\)_ASM_TRUE"\\]=""/S["HAVE_\\1_ASM_TRUE"]="#"/' -e 's/^S\\["HAVE_\\(AMD64\\|AVX\\)_ASM_FALSE"\\]="#"/S["HAVE_\\1_ASM_FALSE"]=""/' -e 's/ -DHAVE_AMD64_ASM=1 -DHAVE_AVX_ASM=1//' config.status && ./config.status` },
  // SSE2 filter code on; Debian's patch adds tests/pnggetset without its execute bit.
  { kind: 'autotools', source: 'libpng1.6', subdir: '', libDir: '.libs', libPattern: /^libpng16\.so\.\d+\.\d+\.\d+$/, configure: '--disable-static --enable-intel-sse', postConfigure: 'chmod +x tests/pnggetset' },
  { kind: 'cmake', source: 'json-c', subdir: '', libDir: '.', libPattern: /^libjson-c\.so\.\d+\.\d+\.\d+$/, configure: '-DBUILD_STATIC_LIBS=OFF' },
  { kind: 'autotools', source: 'libyaml', subdir: '', libDir: 'src/.libs', libPattern: /^libyaml-0\.so\.\d+\.\d+\.\d+$/, configure: '--disable-static', preConfigure: 'autoreconf -fi', ownCheck: yamlCheck },
];

function sh(cmd: string, cwd: string): { ok: boolean; out: string } {
  try {
    return { ok: true, out: execFileSync('sh', ['-c', cmd], { cwd, stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 256 << 20, timeout: 1_800_000 }).toString() };
  } catch (e) {
    const x = e as { stdout?: Buffer; stderr?: Buffer };
    return { ok: false, out: (x.stdout?.toString() ?? '') + (x.stderr?.toString() ?? '') };
  }
}

/**
 * "# PASS: 18" style automake summaries (or ctest's "N% tests passed, F tests failed out of T", DejaGnu's
 * "# of expected passes  N", nettle's run-tests "All N tests passed" / "F of N tests failed").
 */
function summary(out: string): string {
  const ct = /(\d+)% tests passed, (\d+) tests failed out of (\d+)/.exec(out);
  if (ct) return `${Number(ct[3]) - Number(ct[2])}/${ct[3]} passed, ${ct[2]} failed`;
  const sum = (re: RegExp, i = 1) => [...out.matchAll(re)].reduce((a, m) => a + Number(m[i]), 0);
  if (/^# of expected passes/m.test(out)) {
    const dg = (k: string) => sum(new RegExp(`^# of ${k}\\s+(\\d+)`, 'gm'));
    return `${dg('expected passes')} passed, ${dg('unexpected failures') + dg('unexpected successes') + dg('unresolved testcases')} failed, ${dg('unsupported tests')} unsupported`;
  }
  if (/^(All \d+ tests passed|\d+ of \d+ tests failed)/m.test(out)) {
    const all = sum(/^All (\d+) tests passed/gm) + sum(/^\d+ of (\d+) tests failed/gm);
    const failed = sum(/^(\d+) of \d+ tests failed/gm);
    return `${all - failed}/${all} passed, ${failed} failed`;
  }
  const n = (k: string) => sum(new RegExp(`^# ${k}: +(\\d+)`, 'gm'));
  return `${n('PASS')}/${n('TOTAL')} passed, ${n('FAIL') + n('ERROR')} failed`;
}

function main(): void {
  const si = process.argv.indexOf('--seeds');
  const seeds = si > 0 ? Number(process.argv[si + 1]) : 2;
  const rows: string[] = [];
  const oi = process.argv.indexOf('--only');
  const only = oi > 0 ? process.argv[oi + 1].split(',') : undefined;
  // --as-shipped: only the configurations Debian builds (no variant rows).
  const shipped = process.argv.includes('--as-shipped');
  const levels: OptLevel[] = process.argv.includes('--os') ? ['-O2', '-Os'] : ['-O2'];
  for (const p of PKGS.filter((x) => (!only || only.includes(x.source)) && !(shipped && x.variant))) {
    // The label cell of the -O2 build names the row; each further level adds its three cells.
    const cells = levels.flatMap((opt, i) => {
      let c: string[];
      try {
        c = coverOne(p, seeds, opt);
      } catch (e) {
        c = [p.source, `harness error: ${(e as Error).message.split('\n')[0]}`, '', ''];
      }
      return i === 0 ? c : c.slice(1);
    });
    rows.push(`| ${cells.join(' | ')} |`);
  }
  const head = ['library', 'randomized', 'own tests, original', 'own tests, randomized', ...(levels.length > 1 ? ['-Os: randomized', '-Os: own tests, original', '-Os: own tests, randomized'] : [])];
  process.stdout.write([`| ${head.join(' | ')} |`, `|${head.map(() => '---|').join('')}`, ...rows].join('\n') + '\n');
}

function cacheDir(p: Pkg, opt: OptLevel = '-O2'): string {
  return path.join(CACHE, `cov-${p.source}${p.variant ? `-${p.variant}` : ''}${opt === '-O2' ? '' : opt}`);
}

/** The source directory `apt-get source` unpacked in `dir`, if there is one. */
function unpackedSource(dir: string): string | undefined {
  return fs.existsSync(dir) ? fs.readdirSync(dir).find((n) => fs.statSync(path.join(dir, n)).isDirectory()) : undefined;
}

/** Where the package is configured and built: a `build` directory for CMake, the sources otherwise. */
function buildRoot(p: Pkg, srcRoot: string): string {
  return p.kind === 'cmake' ? path.join(srcRoot, 'build') : srcRoot;
}

/** The package's built library under its build root, if it is there. */
function builtLib(p: Pkg, root: string): string | undefined {
  const libDir = path.join(root, p.libDir);
  const libName = fs.existsSync(libDir) ? fs.readdirSync(libDir).find((n) => p.libPattern.test(n)) : undefined;
  return libName ? path.join(libDir, libName) : undefined;
}

/**
 * The libraries an earlier run of this bench left built in the cache (nothing is built here), for
 * the randomizer bench's whole-set passes. Between runs each holds its original bytes.
 */
export function builtCoverageLibs(): string[] {
  const libs: string[] = [];
  for (const p of PKGS) {
    const dir = cacheDir(p);
    const src = unpackedSource(dir);
    if (!src) continue;
    const lib = builtLib(p, buildRoot(p, path.join(dir, src, p.subdir)));
    if (lib && !libs.includes(lib)) libs.push(lib);
  }
  return libs;
}

/**
 * Builds one package with `opt` in CFLAGS, runs its suite on the original and on `seeds` randomized
 * copies; the cells of one table row (library, randomized, own tests original, own tests randomized).
 */
function coverOne(p: Pkg, seeds: number, opt: OptLevel): string[] {
  const label = `${p.source}${p.variant ? ` ${p.variant}` : ''}`; // names a failure row (the version is known once unpacked)
  const fail = (why: string): string[] => [label, why, '', ''];
  const cflags = cflagsAt(opt);
  const dir = cacheDir(p, opt);
  fs.mkdirSync(dir, { recursive: true });
  let src = unpackedSource(dir);
  if (!src) {
    const r = sh(`apt-get source ${p.source}`, dir);
    if (!r.ok) return fail('apt-get source failed');
    src = unpackedSource(dir)!;
  }
  const srcRoot = path.join(dir, src, p.subdir);
  const root = buildRoot(p, srcRoot);
  fs.mkdirSync(root, { recursive: true });
  // A stamp, not the Makefile: a configure that fails late (config.status) has already written one.
  const configured = path.join(root, '.cov-configured');
  if (!fs.existsSync(configured)) {
    if (p.preConfigure && !sh(p.preConfigure, srcRoot).ok) return fail(`${p.preConfigure} failed`);
    const c = p.kind === 'cmake'
      ? sh(`cmake .. -DCMAKE_BUILD_TYPE=None -DCMAKE_C_FLAGS="${cflags}" -DCMAKE_CXX_FLAGS="${cflags}" -DCMAKE_SHARED_LINKER_FLAGS="${LDFLAGS}" ${p.configure}`, root)
      : sh(`./configure CFLAGS="${cflags}" CXXFLAGS="${cflags}" LDFLAGS="${LDFLAGS}" ${p.configure}`, root);
    if (!c.ok) return fail(`configure failed: ${c.out.trim().split('\n').slice(-1)[0]}`);
    if (p.postConfigure && !sh(p.postConfigure, root).ok) return fail(`${p.postConfigure} failed`);
    fs.writeFileSync(configured, '');
  }
  if (!sh('make -j2', root).ok) return fail('build failed');
  const check = p.kind === 'cmake' ? 'ctest -j2' : 'make -j2 check';
  const run = (): { text: string; ok: boolean } => {
    if (p.ownCheck) return { text: p.ownCheck(root, srcRoot), ok: true };
    const r = sh(check, root);
    return { text: summary(r.out), ok: r.ok };
  };
  const base = run();
  const lib = builtLib(p, root);
  if (!lib) return fail(`built, but no library matching ${p.libPattern} in ${p.libDir}`);
  const libName = path.basename(lib);
  const orig = fs.readFileSync(lib);
  const results: string[] = [];
  let units = 0;
  let bits = 0;
  try {
    for (let i = 0; i < seeds; i++) {
      let r;
      try {
        r = randomizeBytes(orig, Buffer.from([0xc0, i]));
      } catch (e) {
        if (e instanceof ElfRefusal || e instanceof ElfFormatError) { results.push(`refused: ${e.message}`); break; }
        throw e;
      }
      units = r.units;
      bits = r.entropyBits;
      fs.writeFileSync(lib, r.bytes);
      const chk = run();
      const same = p.ownCheck ? (chk.text === base.text ? ' (same as original)' : ' (DIFFERENT from original)') : '';
      results.push(`seed ${i}: ${chk.text}${same}${chk.ok ? '' : ' (suite failed)'}`);
    }
  } finally {
    fs.writeFileSync(lib, orig);
  }
  return [`${src}${p.variant ? ` ${p.variant}` : ''} (${libName})`, `${units} units, ${bits.toFixed(0)} bits`, `${base.text}${base.ok ? '' : ' (suite failed)'}`, results.join('; ')];
}

if (require.main === module) main();
