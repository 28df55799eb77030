/**
 * The loader hook's costs and savings, one run (prints a Markdown section for bench/RESULTS.md):
 *  1. launch time of a program using 10 randomizable libraries (SQLite, zlib, 8 generated):
 *     no hook vs the minimal auditor (la_version only: LD_AUDIT's floor) vs the idle hook vs the
 *     libc-free hook on all hits vs a libc-linked build of the same hook; and the floor alone on
 *     an empty program (LD_AUDIT with the minimal auditor, the same file as LD_PRELOAD, a missing one);
 *  2. memory: total PSS of the SQLite image's mappings over 16 processes, one shared image vs
 *     a private copy per process (16 distinct files of the same bytes: no page is shared,
 *     exactly as with a per-process load-time randomization);
 *  3. cold miss latency: a launch whose libraries have no image yet (on_miss = wait) against
 *     the same launch on hits, and the daemon's randomization time per library.
 * Run: npx tsc -p . && make -C loader-hook && node dist/bench/hook.js > section.md  (FSCACHE_BENCH_ROUNDS, default 300)
 */
import { execFileSync, spawn, spawnSync, ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { launchtimer, ms, ratio } from './harness';
import { CFLAGS, LDFLAGS, REPO } from '../test/elf/libs';
import { cli, currentEpoch, imageFor, launch, Libs, libs, makeSandbox, removeSandbox, Sandbox, startDaemon, stopDaemon, writeConf } from '../test/hook/sandbox';

const N_SMALL = 8;
const PROCS = 16;
const ROUNDS = Number(process.env.FSCACHE_BENCH_ROUNDS ?? 300);

/** launchtimer over `variants` (env, argv), ROUNDS launches each: the median wall and CPU ms of each. */
const interleaved = (timer: string, variants: Array<[string, string[]]>) => launchtimer(timer, ROUNDS, variants);

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

    const minimal = path.join(sb.root, 'audit-min.so');
    execFileSync('gcc', ['-O2', '-fPIC', '-ffreestanding', '-nostdlib', '-fvisibility=hidden', '-shared', '-Wl,-z,now', '-o', minimal,
      path.join(REPO, 'loader-hook', 'audit-min.c')]);
    const idleHook = path.join(sb.root, 'audit-idle.so');
    execFileSync('make', ['-s', '-C', path.join(REPO, 'loader-hook'), `ROOT=${path.join(sb.root, 'nothing-here')}`, `OUT=${idleHook}`]);
    const timer = path.join(sb.root, 'launchtimer');
    execFileSync('gcc', ['-O2', '-o', timer, path.join(REPO, 'loader-hook', 'launchtimer.c')]);

    say('## Launch time, 10 libraries, all hits');
    say('');
    say(`Program \`ten\` linked (-z now) against SQLite, zlib and ${N_SMALL} generated libraries (41 functions each), all built`);
    say(`with -ffunction-sections and --emit-relocs; \`fscache warm\` made ${hits}/10 images. loader-hook/launchtimer.c runs the`);
    say(`five variants interleaved (rotating order), ${ROUNDS} launches each per round, and records wall time and the child's`);
    say('user+system CPU time (wait4 rusage). Medians; ratios against no hook in the same round.');
    say('');
    say('"minimal": loader-hook/audit-min.c, an auditor exporting only la_version (returns LAV_CURRENT), freestanding:');
    say('the floor of LD_AUDIT. "idle": our hook built for a root with no epoch file (la_version finds nothing, la_objsearch');
    say('returns at once). "hook": our hook, every library a hit. "libc": the same hook linked against libc.');
    say('');
    say('| round | none wall / cpu | minimal wall / cpu | idle wall / cpu | hook wall / cpu | libc wall / cpu | minimal ratio | idle ratio | hook ratio | libc ratio | hook / minimal |');
    say('|---|---|---|---|---|---|---|---|---|---|---|');
    for (let round = 1; round <= 3; round++) {
      const { wall: w, cpu: c } = interleaved(timer, [['-', [prog]], [`LD_AUDIT=${minimal}`, [prog]], [`LD_AUDIT=${idleHook}`, [prog]],
        [`LD_AUDIT=${sb.auditor}`, [prog]], [`LD_AUDIT=${libcHook}`, [prog]]]);
      const r = (i: number, base = 0) => `${ratio(w[i], w[base])} / ${ratio(c[i], c[base])}`;
      say(`| ${round} | ${w.map((x, i) => `${ms(x)} / ${ms(c[i])}`).join(' | ')} | ${r(1)} | ${r(2)} | ${r(3)} | ${r(4)} | ${r(3, 1)} |`);
    }
    say('');
    say('The floor alone, on an empty program (`int main(void){return 0;}`), same interleaving: LD_AUDIT with the minimal');
    say('auditor, the same file as LD_PRELOAD (one more object in the base namespace), and LD_AUDIT naming a missing file');
    say('(ld.so tries, fails, prints a warning and goes on).');
    say('');
    const empty = path.join(sb.root, 'empty');
    fs.writeFileSync(`${empty}.c`, 'int main(void) { return 0; }\n');
    execFileSync('gcc', ['-O2', '-o', empty, `${empty}.c`]);
    say('| none wall / cpu | LD_AUDIT minimal | LD_PRELOAD minimal | LD_AUDIT missing file |');
    say('|---|---|---|---|');
    const f = interleaved(timer, [['-', [empty]], [`LD_AUDIT=${minimal}`, [empty]], [`LD_PRELOAD=${minimal}`, [empty]],
      [`LD_AUDIT=${path.join(sb.root, 'missing.so')}`, [empty]]]);
    const d = (i: number) => `+${ms(f.wall[i] - f.wall[0])} / +${ms(f.cpu[i] - f.cpu[0])} (${ratio(f.wall[i], f.wall[0])} / ${ratio(f.cpu[i], f.cpu[0])})`;
    say(`| ${ms(f.wall[0])} / ${ms(f.cpu[0])} | ${d(1)} | ${d(2)} | ${d(3)} |`);
    say('');
    say(`Load average during the run: ${fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')} (2 cores shared with other work).`);
    const rss = (hook: string) => execFileSync('sh', ['-c', `LD_AUDIT=${hook} cat /proc/self/status | grep VmRSS | tr -s ' \t' ' '`]).toString().trim();
    say('');
    const sys = (extra: string[]) => {
      const f = path.join(sb.root, 'strace.out');
      execFileSync('strace', ['-f', '-o', f, ...extra, prog]);
      return fs.readFileSync(f, 'utf8').trim().split('\n').length;
    };
    const faults = (env: string[]) => {
      // perf stat -x, writes "<count>,,page-faults,..." to stderr.
      const r = spawnSync('env', [...env, 'perf', 'stat', '-x,', '-r', '50', '-e', 'page-faults', prog], { encoding: 'utf8' });
      return /^([\d.]+),/m.exec(r.stderr ?? '')?.[1] ?? 'n/a (no perf)';
    };
    say(`System calls of one launch (strace): no hook ${sys([])}, minimal ${sys(['-E', `LD_AUDIT=${minimal}`])}, idle hook ${sys(['-E', `LD_AUDIT=${idleHook}`])}, ` +
      `hook ${sys(['-E', `LD_AUDIT=${sb.auditor}`])}, libc-linked hook ${sys(['-E', `LD_AUDIT=${libcHook}`])}. Page faults (perf stat, mean of 50): ` +
      `no hook ${faults([])}, minimal ${faults([`LD_AUDIT=${minimal}`])}, idle ${faults([`LD_AUDIT=${idleHook}`])}, hook ${faults([`LD_AUDIT=${sb.auditor}`])}.`);
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
