/**
 * The loader hook's costs and savings, one run (prints a Markdown section for bench/RESULTS.md):
 *  1. launch time of a program using 10 randomizable libraries (SQLite, zlib, 8 generated):
 *     no hook vs the libc-free hook on all hits vs a libc-linked build of the same hook;
 *  2. memory: total PSS of the SQLite image's mappings over 16 processes, one shared image vs
 *     a private copy per process (16 distinct files of the same bytes: no page is shared,
 *     exactly as with a per-process load-time randomization);
 *  3. cold miss latency: a launch whose libraries have no image yet (on_miss = wait) against
 *     the same launch on hits, and the daemon's randomization time per library.
 * Run: npx tsc -p . && make -C loader-hook && node dist/bench/hook.js > section.md  (FSCACHE_BENCH_ROUNDS, default 300)
 */
import { execFileSync, spawn, ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { ms, ratio } from './harness';
import { CFLAGS, LDFLAGS, REPO } from '../test/elf/libs';
import { cli, currentEpoch, imageFor, launch, Libs, libs, makeSandbox, removeSandbox, Sandbox, startDaemon, stopDaemon, writeConf } from '../test/hook/sandbox';

const N_SMALL = 8;
const PROCS = 16;
const ROUNDS = Number(process.env.FSCACHE_BENCH_ROUNDS ?? 300);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function buildSmallLibs(sb: Sandbox): string[] {
  const src = path.join(sb.root, 'src');
  fs.mkdirSync(src);
  const names: string[] = [];
  for (let k = 0; k < N_SMALL; k++) {
    const fns: string[] = [];
    for (let j = 0; j < 40; j++) fns.push(`int f${k}_${j}(int x) { return ${j === 0 ? 'x' : `f${k}_${j - 1}(x) * 3`} + ${j}; }`);
    fns.push(`int lib${k}_entry(int x) { return f${k}_39(x); }`);
    fs.writeFileSync(path.join(src, `l${k}.c`), fns.join('\n') + '\n');
    const lib = path.join(sb.lib, `libbench${k}.so.1`);
    // -O2 -fno-inline: at -O1 the tiny functions' alignment padding makes the randomizer refuse most layouts.
    execFileSync('gcc', [...CFLAGS.split(' '), '-fno-inline', '-shared', LDFLAGS, '-Wl,-z,now', `-Wl,-soname,libbench${k}.so.1`,
      path.join(src, `l${k}.c`), '-o', lib]);
    fs.chmodSync(lib, 0o644);
    names.push(`libbench${k}.so.1`);
  }
  return names;
}

function buildProgram(sb: Sandbox, l: Libs, small: string[]): string {
  const decls = small.map((_, k) => `int lib${k}_entry(int);`).join('\n');
  const calls = small.map((_, k) => `s += lib${k}_entry(${k});`).join(' ');
  const c = path.join(sb.root, 'src', 'ten.c');
  fs.writeFileSync(c, `#include <sqlite3.h>\n#include <zlib.h>\n${decls}\nint main(void){ long s = sqlite3_libversion_number(); s += zlibVersion()[0]; ${calls} return s == 0; }\n`);
  const prog = path.join(sb.root, 'ten');
  execFileSync('gcc', ['-O2', `-I${l.zlibInclude}`, `-I${l.sqliteInclude}`, c, '-o', prog, `-Wl,-rpath,${sb.lib}`, '-Wl,-z,now', `-L${sb.lib}`,
    '-l:libsqlite3.so.0', '-l:libz.so.1', ...small.map((n) => `-l:${n}`)]);
  return prog;
}

function pssOf(pid: number, file: string): number {
  let kb = 0;
  let inFile = false;
  for (const line of fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) inFile = line.trimEnd().endsWith(file);
    else if (inFile && line.startsWith('Pss:')) kb += Number(line.split(/\s+/)[1]);
  }
  return kb;
}

/** Starts PROCS consumers (each holding its mappings for a while) and sums the PSS of `file(i)`. */
async function pssOver(sb: Sandbox, env: (i: number) => Record<string, string>, file: (i: number) => string): Promise<{ total: number; each: number[] }> {
  const kids: ChildProcess[] = [];
  const ready: Promise<void>[] = [];
  for (let i = 0; i < PROCS; i++) {
    const c = spawn(sb.consumer, ['6000'], { env: { PATH: '/usr/bin:/bin', ...env(i) }, stdio: ['ignore', 'pipe', 'ignore'] });
    kids.push(c);
    ready.push(new Promise((r) => c.stdout!.once('data', () => r())));
  }
  await Promise.all(ready);
  await new Promise((r) => setTimeout(r, 300));
  const each = kids.map((c, i) => pssOf(c.pid!, file(i)));
  await Promise.all(kids.map((c) => new Promise((r) => c.once('exit', r))));
  return { total: each.reduce((a, b) => a + b, 0), each };
}

async function main(): Promise<void> {
  const l = libs();
  if ('skip' in l) throw new Error(l.skip);
  const sb = makeSandbox(l);
  const out: string[] = [];
  const say = (s = '') => { out.push(s); process.stderr.write(s + '\n'); };
  try {
    const small = buildSmallLibs(sb);
    const prog = buildProgram(sb, l, small);
    const libcHook = path.join(sb.root, 'audit-libc.so');
    execFileSync('make', ['-s', '-C', path.join(REPO, 'loader-hook'), 'libc', `ROOT=${sb.root}`, `OUT=${libcHook}`]);
    writeConf(sb, { on_miss: 'original' });
    const warm = cli(sb, 'warm');
    say(`<!-- ${warm.stdout.trim()} -->`);
    const e = currentEpoch(sb);
    const ten = [path.join(sb.lib, 'libsqlite3.so.0'), path.join(sb.lib, 'libz.so.1'), ...small.map((n) => path.join(sb.lib, n))];
    const hits = ten.filter((f) => fs.existsSync(imageFor(sb, f, e))).length;
    const check = launch(sb, {}, [], prog);
    if (check.status !== 0) throw new Error(`ten libraries program failed with the hook: ${check.out}`);

    say('## Launch time, 10 libraries, all hits');
    say('');
    say(`Program \`ten\` linked (-z now) against SQLite, zlib and ${N_SMALL} generated libraries (41 functions each), all built`);
    say(`with -ffunction-sections and --emit-relocs; \`fscache warm\` made ${hits}/10 images. loader-hook/launchtimer.c runs the`);
    say(`four variants interleaved (rotating order), ${ROUNDS} launches each per round, and records wall time and the child's`);
    say('user+system CPU time (wait4 rusage). Medians; ratios against no hook in the same round.');
    say('');
    say('"idle hook": the libc-free hook built for a root with no epoch file, so it redirects nothing: the fixed cost of');
    say('LD_AUDIT itself (loading the auditor, ld.so\'s audit paths), without any per-library work.');
    say('');
    say('| round | no hook wall / cpu | libc-free hook wall / cpu | libc-linked hook wall / cpu | idle hook wall / cpu | libc-free ratio wall / cpu | libc-linked ratio wall / cpu | idle ratio wall / cpu |');
    say('|---|---|---|---|---|---|---|---|');
    const idleHook = path.join(sb.root, 'audit-idle.so');
    execFileSync('make', ['-s', '-C', path.join(REPO, 'loader-hook'), `ROOT=${path.join(sb.root, 'nothing-here')}`, `OUT=${idleHook}`]);
    const timer = path.join(sb.root, 'launchtimer');
    execFileSync('gcc', ['-O2', '-o', timer, path.join(REPO, 'loader-hook', 'launchtimer.c')]);
    for (let round = 1; round <= 3; round++) {
      const text = execFileSync(timer, [String(ROUNDS), '-', '--', prog, ';;', `LD_AUDIT=${sb.auditor}`, '--', prog, ';;', `LD_AUDIT=${libcHook}`, '--', prog,
        ';;', `LD_AUDIT=${idleHook}`, '--', prog],
        { maxBuffer: 64 << 20 }).toString();
      const wall: number[][] = [[], [], [], []];
      const cpu: number[][] = [[], [], [], []];
      for (const line of text.trim().split('\n')) {
        const [v, w, c] = line.split(' ').map(Number);
        wall[v].push(w / 1000);
        cpu[v].push(c / 1000);
      }
      const mw = wall.map(median);
      const mc = cpu.map(median);
      say(`| ${round} | ${ms(mw[0])} / ${ms(mc[0])} | ${ms(mw[1])} / ${ms(mc[1])} | ${ms(mw[2])} / ${ms(mc[2])} | ${ms(mw[3])} / ${ms(mc[3])} | ` +
        `${ratio(mw[1], mw[0])} / ${ratio(mc[1], mc[0])} | ${ratio(mw[2], mw[0])} / ${ratio(mc[2], mc[0])} | ${ratio(mw[3], mw[0])} / ${ratio(mc[3], mc[0])} |`);
    }
    say('');
    say(`Load average during the run: ${fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')} (2 cores shared with other work).`);
    const rss = (hook: string) => execFileSync('sh', ['-c', `LD_AUDIT=${hook} cat /proc/self/status | grep VmRSS | tr -s ' \t' ' '`]).toString().trim();
    say('');
    const sys = (extra: string[]) => {
      const f = path.join(sb.root, 'strace.out');
      execFileSync('strace', ['-f', '-o', f, ...extra, prog]);
      return fs.readFileSync(f, 'utf8').trim().split('\n').length;
    };
    say(`System calls of one launch (strace): no hook ${sys([])}, libc-free hook ${sys(['-E', `LD_AUDIT=${sb.auditor}`])}, ` +
      `libc-linked hook ${sys(['-E', `LD_AUDIT=${libcHook}`])}, idle hook ${sys(['-E', `LD_AUDIT=${idleHook}`])}.`);
    say('');
    say(`RSS of \`cat /proc/self/status\` with the hook: none: ${rss('')}; libc-free: ${rss(sb.auditor)}; libc-linked: ${rss(libcHook)}.`);

    say('');
    say(`## Memory: ${PROCS} processes using a randomized SQLite`);
    say('');
    const sqliteImg = imageFor(sb, path.join(sb.lib, 'libsqlite3.so.0'), e);
    const shared = await pssOver(sb, () => ({ LD_AUDIT: sb.auditor }), () => sqliteImg);
    // Private: each process its own copy (a distinct file: nothing shared, as with per-process randomization).
    const privDirs: string[] = [];
    for (let i = 0; i < PROCS; i++) {
      const d = path.join(sb.root, 'private', String(i));
      fs.mkdirSync(d, { recursive: true });
      fs.copyFileSync(sqliteImg, path.join(d, 'libsqlite3.so.0'));
      privDirs.push(d);
    }
    const priv = await pssOver(sb, (i) => ({ LD_LIBRARY_PATH: privDirs[i] }), (i) => path.join(privDirs[i], 'libsqlite3.so.0'));
    say(`Each process runs the test consumer (200 rows inserted, compressed, read back), then sleeps; PSS summed over every`);
    say(`mapping of the SQLite file in \`/proc/PID/smaps\` (code, rodata, data).`);
    say('');
    say('| | total PSS of SQLite, 16 processes | per process |');
    say('|---|---|---|');
    say(`| one shared image (hook) | ${shared.total} kB | ${(shared.total / PROCS).toFixed(0)} kB |`);
    say(`| private copy per process | ${priv.total} kB | ${(priv.total / PROCS).toFixed(0)} kB |`);
    say(`| ratio | ${(priv.total / shared.total).toFixed(1)}× less with the shared image | |`);

    say('');
    say('## Cold miss latency');
    say('');
    writeConf(sb, { on_miss: 'wait', miss_wait_ms: '30000' });
    await startDaemon(sb);
    const rows: string[] = [];
    for (let i = 0; i < 3; i++) {
      cli(sb, 'rerandomize');
      const cold = launch(sb); // both SQLite and zlib miss
      const hot = launch(sb);
      rows.push(`| ${i + 1} | ${cold.ms} ms | ${hot.ms} ms |`);
    }
    const images = JSON.parse(cli(sb, 'images', '--json').stdout) as { epoch: string; images: { epoch: string; source: string; size: number; madeMs: number }[] };
    say('The consumer (SQLite + zlib) right after `fscache rerandomize` with on_miss = wait (both libraries miss, the daemon');
    say('randomizes them while the loader waits), then again (hits). Wall time of the whole launch:');
    say('');
    say('| epoch | cold (2 misses) | hit |');
    say('|---|---|---|');
    for (const r of rows) say(r);
    say('');
    say('Daemon time per image (read, randomize, verify, write, fsync, rename), last epoch:');
    for (const img of images.images.filter((x) => x.epoch === images.epoch)) say(`- ${path.basename(img.source)}: ${img.madeMs} ms (${(img.size / 1024).toFixed(0)} KiB)`);
    writeConf(sb, { on_miss: 'original' });
    cli(sb, 'rerandomize');
    const noWait = launch(sb);
    say(`- with on_miss = original the same cold launch took ${noWait.ms} ms (originals loaded, requests sent without waiting).`);
    await stopDaemon(sb);
    process.stdout.write(out.join('\n') + '\n');
  } finally {
    await stopDaemon(sb);
    removeSandbox(sb);
  }
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack}\n`);
  process.exit(1);
});
