/**
 * Coverage beyond the test suite: libraries from Debian source packages (autotools or CMake), built with the
 * randomization flags, whose own `make check` suites run against randomized copies (the randomized
 * .so is swapped in place of the built one, which libtool's wrappers or CMake's build RPATH then
 * load; the original is restored afterwards).
 *
 *   npx tsc -p . && node dist/bench/randomize-coverage.js [--seeds 2] [--only xz-utils|expat]
 *
 * Slow (configure + build + make check per package, a few minutes each on 2 cores): not part of
 * the jest run. Prints markdown for bench/RESULTS.md.
 */
import { execFileSync } from 'child_process';
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { ElfFormatError, ElfRefusal, randomizeBytes } from '../elf';
import { CACHE, CFLAGS, LDFLAGS } from '../test/elf/libs';

interface Pkg {
  source: string; subdir: string; libDir: string; libPattern: RegExp; configure: string; kind: 'autotools' | 'cmake';
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

const PKGS: Pkg[] = [
  { kind: 'autotools', source: 'xz-utils', subdir: '', libDir: 'src/liblzma/.libs', libPattern: /^liblzma\.so\.\d+\.\d+\.\d+$/, configure: '--disable-static --disable-nls --disable-doc' },
  // Debian's expat source is the upstream git tree (no configure script): built with CMake, tests run by ctest.
  { kind: 'cmake', source: 'expat', subdir: 'expat', libDir: '.', libPattern: /^libexpat\.so\.\d+\.\d+\.\d+$/, configure: '-DEXPAT_BUILD_TESTS=ON -DEXPAT_BUILD_EXAMPLES=OFF -DEXPAT_BUILD_DOCS=OFF',
    // Debian's security patches test `#if XML_DTD == 1` (autotools defines it as 1, CMake as empty).
    postConfigure: "sed -i 's/^#define XML_DTD$/#define XML_DTD 1/; s/^#define XML_NS$/#define XML_NS 1/' expat_config.h",
    ownCheck: xmlwfCheck },
];

function sh(cmd: string, cwd: string): { ok: boolean; out: string } {
  try {
    return { ok: true, out: execFileSync('sh', ['-c', cmd], { cwd, stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 256 << 20, timeout: 1_800_000 }).toString() };
  } catch (e) {
    const x = e as { stdout?: Buffer; stderr?: Buffer };
    return { ok: false, out: (x.stdout?.toString() ?? '') + (x.stderr?.toString() ?? '') };
  }
}

/** "# PASS: 18" style automake summaries (or ctest's "N% tests passed, F tests failed out of T"). */
function summary(out: string): string {
  const ct = /(\d+)% tests passed, (\d+) tests failed out of (\d+)/.exec(out);
  if (ct) return `${Number(ct[3]) - Number(ct[2])}/${ct[3]} passed, ${ct[2]} failed`;
  const n = (k: string) => [...out.matchAll(new RegExp(`^# ${k}: +(\\d+)`, 'gm'))].reduce((a, m) => a + Number(m[1]), 0);
  return `${n('PASS')}/${n('TOTAL')} passed, ${n('FAIL') + n('ERROR')} failed`;
}

function main(): void {
  const si = process.argv.indexOf('--seeds');
  const seeds = si > 0 ? Number(process.argv[si + 1]) : 2;
  const rows: string[] = [];
  const only = process.argv.indexOf('--only');
  for (const p of PKGS.filter((x) => only < 0 || x.source === process.argv[only + 1])) {
    try {
      rows.push(coverOne(p, seeds));
    } catch (e) {
      rows.push(`| ${p.source} | harness error: ${(e as Error).message.split('\n')[0]} | | |`);
    }
  }
  process.stdout.write(['| library | randomized | own tests, original | own tests, randomized |', '|---|---|---|---|', ...rows].join('\n') + '\n');
}

/** Builds one package, runs its suite on the original and on `seeds` randomized copies; one table row. */
function coverOne(p: Pkg, seeds: number): string {
  const dir = path.join(CACHE, `cov-${p.source}`);
  fs.mkdirSync(dir, { recursive: true });
  let src = fs.readdirSync(dir).find((n) => fs.statSync(path.join(dir, n)).isDirectory());
  if (!src) {
    const r = sh(`apt-get source ${p.source}`, dir);
    if (!r.ok) return `| ${p.source} | apt-get source failed | | |`;
    src = fs.readdirSync(dir).find((n) => fs.statSync(path.join(dir, n)).isDirectory())!;
  }
  const srcRoot = path.join(dir, src, p.subdir);
  const root = p.kind === 'cmake' ? path.join(srcRoot, 'build') : srcRoot;
  fs.mkdirSync(root, { recursive: true });
  if (!fs.existsSync(path.join(root, 'Makefile'))) {
    const c = p.kind === 'cmake'
      ? sh(`cmake .. -DCMAKE_BUILD_TYPE=None -DCMAKE_C_FLAGS="${CFLAGS}" -DCMAKE_CXX_FLAGS="${CFLAGS}" -DCMAKE_SHARED_LINKER_FLAGS="${LDFLAGS}" ${p.configure}`, root)
      : sh(`./configure CFLAGS="${CFLAGS}" CXXFLAGS="${CFLAGS}" LDFLAGS="${LDFLAGS}" ${p.configure}`, root);
    if (!c.ok) return `| ${p.source} | configure failed: ${c.out.trim().split('\n').slice(-1)[0]} | | |`;
    if (p.postConfigure) sh(p.postConfigure, root);
  }
  if (!sh('make -j2', root).ok) return `| ${p.source} | build failed | | |`;
  const check = p.kind === 'cmake' ? 'ctest -j2' : 'make -j2 check';
  const run = (): { text: string; ok: boolean } => {
    if (p.ownCheck) return { text: p.ownCheck(root, srcRoot), ok: true };
    const r = sh(check, root);
    return { text: summary(r.out), ok: r.ok };
  };
  const base = run();
  const libDir = path.join(root, p.libDir);
  const libName = fs.readdirSync(libDir).find((n) => p.libPattern.test(n))!;
  const lib = path.join(libDir, libName);
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
  return `| ${src} (${libName}) | ${units} units, ${bits.toFixed(0)} bits | ${base.text} | ${results.join('; ')} |`;
}

main();
