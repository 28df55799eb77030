/**
 * Randomizer bench: time to randomize + verify per MB of code, entropy, gadget survival and
 * coverage (libraries that randomize and pass their own tests, libraries refused and why).
 *
 * Time is reported three ways, because V8 needs about ten SQLite-sized randomizations before
 * its optimized code settles (the warm-up curve this prints): the first randomization of each
 * library in a fresh process (what a daemon's first request after its start pays), the same
 * library's first twelve randomizations in a fresh process, and the steady state (the timed
 * seeds, after a warm-up of WARMUP_MB of code in this process: what a running daemon pays).
 *
 *   npx tsc -p . && node dist/bench/randomize.js [--seeds 5] [--verify decode|fields] [--suites-between-seeds]
 *
 * Libraries come from the test builders (test/elf/libs.ts; cached under .cache/elf-libs).
 * Prints markdown for bench/RESULTS.md. Nothing here asserts a time.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { inspectBytes, prepareLibrary, randomizeBytes, randomizePrepared, readElf, sectionByName } from '../elf';
import { randomizerNodeFlags } from '../elf/node-flags';
import { builtCoverageLibs } from './randomize-coverage';
import type { VerifyMode } from '../elf';
import { buildBzip2, buildCxx, buildLua, buildSqlite, buildZlib, FIXTURES, runWith, tempDir } from '../test/elf/libs';
import { median } from './harness';

interface Subject {
  name: string;
  lib: string;
  /** Runs the library's own tests against the randomized copy in `dir`; true when they pass. */
  suite: (dir: string) => boolean;
}

/**
 * Return-ending gadgets: every byte sequence of 1..MAX_GADGET bytes of .text that ends with a
 * `ret` (0xc3) or `ret imm16` (0xc2 xx xx) byte pattern, counted by its start offset. A gadget
 * survives when the output has the same bytes at the same address (so an attacker who knows the
 * original library could still use it). Counting byte patterns, not decoded instructions, gives
 * an upper bound: unintended gadgets inside other instructions are included.
 */
const MAX_GADGET = 16;
function gadgetSurvival(input: Uint8Array, output: Uint8Array, textOff: number, textSize: number): { gadgets: number; survived: number } {
  let gadgets = 0;
  let survived = 0;
  for (let p = 0; p < textSize; p++) {
    const b = input[textOff + p];
    let end: number;
    if (b === 0xc3) end = p + 1;
    else if (b === 0xc2 && p + 3 <= textSize) end = p + 3;
    else continue;
    // Longest suffix (ending at `end`) that is unchanged at the same address in the output.
    let same = 0;
    while (same < MAX_GADGET && end - same - 1 >= 0 && input[textOff + end - same - 1] === output[textOff + end - same - 1]) same++;
    const tail = end - p; // the ret itself
    for (let len = tail; len <= MAX_GADGET && end - len >= 0; len++) {
      gadgets++;
      if (same >= len) survived++;
    }
  }
  return { gadgets, survived };
}

function zlibSuite(z: { example: string; minigzip: string; lib: string }): (dir: string) => boolean {
  return (dir) => {
    const ex = runWith(dir, z.example, []);
    if (ex.status !== 0) return false;
    const data = Buffer.concat([fs.readFileSync(z.lib), Buffer.alloc(50000, 3)]);
    const f = path.join(dir, 'payload');
    fs.writeFileSync(f, data);
    const gz = runWith(dir, z.minigzip, ['-c', f]);
    fs.writeFileSync(f + '.gz', Buffer.from(gz.stdout, 'latin1'));
    const back = runWith(dir, z.minigzip, ['-d', '-c', f + '.gz']);
    return gz.status === 0 && back.status === 0 && Buffer.from(back.stdout, 'latin1').equals(data);
  };
}

/** Code randomized before the timed seeds: V8's optimized code is settled by then (see the curve). */
const WARMUP_MB = 15;

/**
 * Runs `body` in a new Node process started with `flags`, with `e` the randomizer's module and `fs`
 * Node's; `body` pushes times onto `t`, which is returned. Module loading is not timed.
 */
function timesInFreshProcess(flags: string[], body: string): number[] {
  const script = `const e = require(${JSON.stringify(path.join(__dirname, '..', 'elf'))}); const fs = require('fs'); const t = [];
    ${body}
    process.stdout.write(JSON.stringify(t));`;
  return JSON.parse(execFileSync(process.execPath, [...flags, '-e', script], { encoding: 'utf8' })) as number[];
}

/** Times `runs` randomizations of `lib` in a fresh process: the cost before V8 has optimized anything. */
function freshProcessRuns(lib: string, runs: number, verify: VerifyMode, flags: string[]): number[] {
  return timesInFreshProcess(flags, `const b = fs.readFileSync(${JSON.stringify(lib)});
    for (let i = 0; i < ${runs}; i++) { const s = performance.now(); e.randomizeBytes(b, Buffer.from([0xf0, i]), { verify: ${JSON.stringify(verify)} }); t.push(performance.now() - s); }`);
}

/**
 * A fresh process randomizing every library in turn, PASSES times with new seeds each pass, as a
 * daemon does from its start: ms per pass. The first pass pays V8's warm-up; its excess over the
 * last pass is a fixed cost of the process, not a cost per MB.
 */
const PASSES = 4;
function freshProcessPasses(libs: string[], verify: VerifyMode, flags: string[]): number[] {
  return timesInFreshProcess(flags, `const libs = ${JSON.stringify(libs)}.map((l) => fs.readFileSync(l));
    for (let p = 0; p < ${PASSES}; p++) { const s = performance.now(); libs.forEach((b, i) => e.randomizeBytes(b, Buffer.from([0xd0, p, i]), { verify: ${JSON.stringify(verify)} })); t.push(performance.now() - s); }`);
}

function main(): void {
  const load = os.loadavg();
  const seedsArg = process.argv.indexOf('--seeds');
  const nSeeds = seedsArg > 0 ? Number(process.argv[seedsArg + 1]) : 5;
  const verifyArg = process.argv.indexOf('--verify');
  const verify = (verifyArg > 0 ? process.argv[verifyArg + 1] : 'decode') as VerifyMode;
  const suitesBetween = process.argv.includes('--suites-between-seeds');
  const subjects: Subject[] = [];
  const z = buildZlib();
  if (z.ok) subjects.push({ name: 'zlib 1.2.13 (Debian source)', lib: z.lib, suite: zlibSuite(z) });
  const sq = buildSqlite();
  if (sq.ok) {
    const base = runWith(sq.dir, sq.driver, []).stdout;
    subjects.push({ name: 'SQLite (better-sqlite3 amalgamation)', lib: sq.lib, suite: (d) => runWith(d, sq.driver, []).stdout === base });
  }
  const lua = buildLua();
  if (lua.ok) {
    const script = path.join(FIXTURES, 'workload.lua');
    const base = runWith(lua.dir, lua.lua, [script]).stdout;
    subjects.push({ name: 'Lua 5.4.4 (Debian source)', lib: lua.lib, suite: (d) => runWith(d, lua.lua, [script]).stdout === base });
  }
  const bz = buildBzip2();
  if (bz.ok) {
    subjects.push({
      name: 'bzip2 1.0.8 (Debian source)', lib: bz.lib,
      suite: (d) => [1, 2, 3].every((n) => {
        const ref = fs.readFileSync(path.join(bz.src, `sample${n}.ref`));
        const packed = fs.readFileSync(path.join(bz.src, `sample${n}.bz2`));
        const c = runWith(d, bz.bzip2, [`-${n}`, '-c'], ref);
        const x = runWith(d, bz.bzip2, ['-d', '-c'], packed);
        return c.status === 0 && Buffer.from(c.stdout, 'latin1').equals(packed) && x.status === 0 && Buffer.from(x.stdout, 'latin1').equals(ref);
      }),
    });
  }
  const cxx = buildCxx();
  if (cxx.ok) subjects.push({ name: 'C++ fixture (exceptions)', lib: cxx.lib, suite: (d) => runWith(d, cxx.test, []).status === 0 });

  // Fresh processes first (this one is still cold, so they do not share a core with its JIT), with
  // the flags the daemon runs with, and with Node's defaults.
  const daemonFlags = randomizerNodeFlags();
  const fresh = new Map(subjects.map((s) => [s.name, median([0, 1, 2].map(() => freshProcessRuns(s.lib, 1, verify, daemonFlags)[0]))]));
  const freshDefault = new Map(subjects.map((s) => [s.name, median([0, 1, 2].map(() => freshProcessRuns(s.lib, 1, verify, [])[0]))]));
  const textSize = (s: Subject) => sectionByName(readElf(fs.readFileSync(s.lib)), '.text')!.sh_size;
  const largest = subjects.reduce((a, b) => (textSize(a) >= textSize(b) ? a : b));
  const curve = freshProcessRuns(largest.lib, 12, verify, daemonFlags);
  // The whole-set passes take every library at hand: these, and the coverage bench's builds still
  // in the cache that randomize (run bench/randomize-coverage.ts first for the full set).
  const extraLibs = builtCoverageLibs().filter((l) => inspectBytes(fs.readFileSync(l)).randomizable);
  const allLibs = [...subjects.map((s) => s.lib), ...extraLibs];
  const allMb = allLibs.reduce((n, l) => n + sectionByName(readElf(fs.readFileSync(l)), '.text')!.sh_size, 0) / 1e6;
  const passRows = [[daemonFlags, `daemon's (${daemonFlags.join(' ')})`], [[], 'Node defaults']].map(([flags, label]) => {
    const runs = [0, 1, 2].map(() => freshProcessPasses(allLibs, verify, flags as string[]));
    const per = (p: number) => median(runs.map((r) => r[p]));
    return `| ${label as string} | ${per(0).toFixed(0)} ms, ${(per(0) / allMb).toFixed(0)} ms/MB | ${per(1).toFixed(0)} ms, ${(per(1) / allMb).toFixed(0)} ms/MB | ${per(PASSES - 1).toFixed(0)} ms, ${(per(PASSES - 1) / allMb).toFixed(0)} ms/MB | ${(per(0) - per(PASSES - 1)).toFixed(0)} ms |`;
  });

  // Warm-up outside the measurements: every library in turn until WARMUP_MB of .text is done.
  for (let done = 0, round = 0; done < WARMUP_MB * 1e6; round++) {
    for (const s of subjects) {
      const r = randomizeBytes(fs.readFileSync(s.lib), Buffer.from([0xaa, round]), { verify });
      done += r.textBytes;
    }
  }

  const rows: string[] = [];
  const phaseRows: string[] = [];
  const out = tempDir('bench');
  for (const s of subjects) {
    const input = fs.readFileSync(s.lib);
    const elf = readElf(input);
    const text = sectionByName(elf, '.text')!;
    const wall: number[] = [];
    const cpu: number[] = [];
    const phases: Record<string, number[]> = {};
    let gadgets = 0;
    let survived = 0;
    let passed = 0;
    let units = 0;
    let bits = 0;
    let outSize = 0;
    // The library's own tests run after all its seeds are timed (unless --suites-between-seeds):
    // each test forks this process, and after a fork every page the next randomization writes
    // costs a copy-on-write fault (about 20 µs each on this VM), which is the harness's cost,
    // not the randomizer's.
    const outputs: Uint8Array[] = [];
    const check = (i: number, bytes: Uint8Array) => {
      const g = gadgetSurvival(input, bytes, text.sh_offset, text.sh_size);
      gadgets = g.gadgets;
      survived += g.survived;
      const dir = path.join(out, `${path.basename(s.lib)}-${i}`);
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, path.basename(s.lib)), bytes, { mode: 0o755 });
      if (s.suite(dir)) passed++;
    };
    for (let i = 0; i < nSeeds; i++) {
      const seed = Buffer.from([0xbe, 0x0c, i]);
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      const r = randomizeBytes(input, seed, { verify });
      wall.push(performance.now() - t0);
      const c1 = process.cpuUsage(c0);
      cpu.push((c1.user + c1.system) / 1000);
      for (const [k, v] of Object.entries(r.timingsMs)) (phases[k] ??= []).push(v);
      units = r.units;
      bits = r.entropyBits;
      outSize = r.bytes.length;
      if (suitesBetween) check(i, r.bytes); else outputs.push(r.bytes);
    }
    outputs.forEach((bytes, i) => check(i, bytes));
    // Later epochs of the same library: the seed-independent analysis is kept (prepareLibrary).
    const prep = prepareLibrary(input);
    const epoch: number[] = [];
    for (let i = 0; i < nSeeds; i++) {
      const t0 = performance.now();
      randomizePrepared(prep, Buffer.from([0xe0, i]), { verify });
      epoch.push(performance.now() - t0);
    }
    const mb = text.sh_size / 1e6;
    const first = fresh.get(s.name)!;
    const firstDefault = freshDefault.get(s.name)!;
    rows.push(`| ${s.name} | ${(text.sh_size / 1024).toFixed(0)} KiB | ${units} | ${bits.toFixed(0)} | ${first.toFixed(0)} ms, ${(first / mb).toFixed(0)} ms/MB (Node defaults: ${firstDefault.toFixed(0)} ms) | ${median(wall).toFixed(0)} ms (best ${Math.min(...wall).toFixed(0)}) | ${(median(wall) / mb).toFixed(0)} (best ${(Math.min(...wall) / mb).toFixed(0)}) | ${(median(cpu) / mb).toFixed(0)} | ${(median(epoch) / mb).toFixed(0)} (best ${(Math.min(...epoch) / mb).toFixed(0)}) | ${((100 * survived) / (gadgets * nSeeds)).toFixed(3)}% of ${gadgets} | ${passed}/${nSeeds} | ${(input.length / 1024).toFixed(0)} → ${(outSize / 1024).toFixed(0)} KiB |`);
    phaseRows.push(`| ${s.name} | ${Object.entries(phases).map(([k, v]) => `${k} ${median(v).toFixed(0)}`).join(', ')} |`);
  }

  // Coverage over this machine's own libraries: all must be refused, with the reason.
  const dir = '/usr/lib/x86_64-linux-gnu';
  const reasons = new Map<string, number>();
  let tried = 0;
  let randomizable = 0;
  for (const n of fs.readdirSync(dir).filter((x) => /\.so(\.\d+)*$/.test(x))) {
    const p = path.join(dir, n);
    let st: fs.Stats;
    try { st = fs.statSync(p); } catch { continue; }
    if (!st.isFile()) continue;
    const bytes = fs.readFileSync(p);
    if (bytes.subarray(0, 4).toString('latin1') !== '\x7fELF') continue;
    tried++;
    const rep = inspectBytes(bytes);
    if (rep.randomizable) { randomizable++; continue; }
    const r = rep.reason!.replace(/ at 0x[0-9a-f]+$/, '');
    reasons.set(r, (reasons.get(r) ?? 0) + 1);
  }

  const lines = [
    `Verifier mode: ${verify}. Seeds per library: ${nSeeds}, timed after a warm-up of ${WARMUP_MB} MB of .text in this process. Own tests run ${suitesBetween ? 'between the timed seeds' : 'after the timed seeds'}. Machine: ${os.cpus().length} cores, load average before the run ${load.map((l) => l.toFixed(2)).join(' ')}, Node ${process.version}.`,
    '',
    `Warm-up curve: ${path.basename(largest.lib)} randomized 12 times in a fresh process (daemon's flags), ms each: ${curve.map((t) => t.toFixed(0)).join(', ')}.`,
    '',
    `A fresh process randomizing all ${allLibs.length} libraries (${allMb.toFixed(2)} MB of .text) ${PASSES} times with new seeds, as a daemon does from its start (median of 3 processes):`,
    '',
    `| Node flags | pass 1 | pass 2 | pass ${PASSES} | pass 1 − pass ${PASSES} (warm-up, once per process) |`,
    '|---|---|---|---|---|',
    ...passRows,
    '',
    '| library | .text | units | entropy bits | first randomization in a fresh process, daemon\'s flags (median of 3 processes) | randomize+verify, steady state, median | ms/MB wall, median | ms/MB CPU, median | ms/MB per later epoch (analysis kept) | ret-gadgets surviving at the same address | own tests passed | file size (debug stripped) |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|',
    ...rows,
    '',
    'Median phase times (ms):',
    '',
    '| library | phases |',
    '|---|---|',
    ...phaseRows,
    '',
    `Host libraries in ${dir}: ${tried} ELF shared objects inspected, ${randomizable} randomizable, ${tried - randomizable} refused:`,
    '',
    ...[...reasons].sort((a, b) => b[1] - a[1]).map(([r, n]) => `- ${n} × ${r}`),
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

main();
