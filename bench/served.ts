/**
 * Images served by the view under the libraries' own names (issue 16), one run, printing a Markdown
 * section for bench/RESULTS.md:
 *  1. launch cost: a program using 10 randomizable libraries, launched through the same view, its
 *     libraries served randomized (R/usr/lib/bench-rand, in library_dirs) against byte-identical
 *     copies served as they are (R/usr/lib/bench-plain, not in library_dirs); loader-hook/launchtimer.c
 *     interleaves the two launch by launch; medians and ratios per round;
 *  2. fscache's own footprint at idle after those launches: RSS and PSS of every fscache process,
 *     once the daemon has left and the supervisor rests (guard/rest.c).
 * The root is R/usr.real an overlay of this machine's /usr (test/hook/view-root.ts), fscache started
 * with its CLI as `start` runs it.
 * Run: npm run build && node dist/bench/served.js > section.md   (FSCACHE_BENCH_ROUNDS, default 300; 3 rounds)
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { launchtimer, median, ms } from './harness';
import { processesOfRoot } from '../test/helpers/bounded';
import { makeViewRoot } from '../test/hook/view-root';

const N_LIBS = 10;
const IDLE_S = 5;
const REST_S = 5;
const ROUNDS = Number(process.env.FSCACHE_BENCH_ROUNDS ?? 300);
const REPO = path.join(__dirname, '..', '..');

/** Sum of a /proc/PID/smaps_rollup field (kB). */
function rollup(pid: number, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

async function main(): Promise<void> {
  // daemon_idle_seconds = 5 (default 60), supervisor_rest_seconds = 5 (default 30): the idle
  // footprint is read after the daemon left and the supervisor went to rest, sooner than by default.
  const vr = makeViewRoot(`library_dirs = usr/lib/bench-rand\naccess_flush_ms = 500\ndaemon_idle_seconds = ${IDLE_S}\nsupervisor_rest_seconds = ${REST_S}\n`);
  const out: string[] = [];
  try {
    const src = path.join(vr.root, 'src');
    fs.mkdirSync(src);
    const dirs = { rand: path.join(vr.realTree, 'lib', 'bench-rand'), plain: path.join(vr.realTree, 'lib', 'bench-plain') };
    for (const d of Object.values(dirs)) fs.mkdirSync(d);
    const names: string[] = [];
    for (let k = 0; k < N_LIBS; k++) {
      const fns: string[] = [];
      for (let j = 0; j < 40; j++) fns.push(`int f${k}_${j}(int x) { return ${j === 0 ? 'x' : `f${k}_${j - 1}(x) * 3`} + ${j}; }`);
      fns.push(`int lib${k}_entry(int x) { return f${k}_39(x); }`);
      fs.writeFileSync(path.join(src, `l${k}.c`), fns.join('\n') + '\n');
      const name = `libserved${k}.so.1`;
      execFileSync('gcc', ['-O2', '-fPIC', '-ffunction-sections', '-fno-inline', '-shared', '-Wl,--emit-relocs', '-Wl,-z,now',
        `-Wl,-soname,${name}`, path.join(src, `l${k}.c`), '-o', path.join(dirs.rand, name)]);
      fs.copyFileSync(path.join(dirs.rand, name), path.join(dirs.plain, name));
      for (const d of Object.values(dirs)) fs.chmodSync(path.join(d, name), 0o644);
      names.push(name);
    }
    const decls = names.map((_, k) => `int lib${k}_entry(int);`).join('\n');
    const calls = names.map((_, k) => `s += lib${k}_entry(${k});`).join(' ');
    fs.writeFileSync(path.join(src, 'ten.c'), `${decls}\nint main(void){ long s = 0; ${calls} return s == 0; }\n`);
    const view = path.join(vr.root, 'usr.view');
    // The program is launched from the host by its path through the view; RUNPATH leads through the view too.
    const programs: Record<string, string> = {};
    for (const [which, dir] of Object.entries(dirs)) {
      programs[which] = path.join(view, 'bin', `ten-${which}`);
      execFileSync('gcc', ['-O2', path.join(src, 'ten.c'), '-o', path.join(vr.realTree, 'bin', `ten-${which}`),
        `-Wl,-rpath,${view}/lib/${path.basename(dir)}`, '-Wl,-z,now', `-L${dir}`, ...names.map((n) => `-l:${n}`)]);
    }
    const timer = path.join(vr.root, 'launchtimer');
    execFileSync('gcc', ['-O2', '-o', timer, path.join(REPO, 'loader-hook', 'launchtimer.c')]);

    const s = vr.cli('start');
    if (s.status !== 0) throw new Error(`start: ${s.stderr}`);
    // Misses: the view asks the daemon; wait until every library is served randomized.
    const served = () => names.filter((n) => !fs.readFileSync(path.join(view, 'lib', 'bench-rand', n)).equals(fs.readFileSync(path.join(dirs.plain, n)))).length;
    const t0 = Date.now();
    while (served() < N_LIBS && Date.now() - t0 < 60_000) {
      execFileSync(programs.rand);
      await new Promise((r) => setTimeout(r, 300));
    }
    if (served() < N_LIBS) throw new Error(`only ${served()} of ${N_LIBS} libraries served randomized after 60 s`);

    out.push('### Launch cost of images served under the libraries\' names, 10 libraries', '');
    out.push(`Program \`ten\` (-z now) against 10 generated libraries (41 functions each, -ffunction-sections --emit-relocs),`,
      'launched from the host by its path through the view, its RUNPATH through the view: `rand` loads them from',
      '`R/usr/lib/bench-rand` (in library_dirs: served as their images, all hits), `plain` byte-identical copies from',
      '`R/usr/lib/bench-plain` (not in library_dirs: served as they are). No LD_AUDIT in either. loader-hook/launchtimer.c',
      `interleaves the two launch by launch, ${ROUNDS} launches each per round; medians of wall time and of the child's`,
      'user+system CPU (wait4 rusage).', '');
    out.push('| round | plain wall / cpu | randomized wall / cpu | ratio wall / cpu |', '|---|---|---|---|');
    const ratios = { wall: [] as number[], cpu: [] as number[] };
    const r3 = (a: number, b: number) => `${(a / b).toFixed(3)}×`;
    for (let round = 1; round <= 3; round++) {
      const r = launchtimer(timer, ROUNDS, [['-', [programs.plain]], ['-', [programs.rand]]]);
      ratios.wall.push(r.wall[1] / r.wall[0]);
      ratios.cpu.push(r.cpu[1] / r.cpu[0]);
      out.push(`| ${round} | ${ms(r.wall[0])} / ${ms(r.cpu[0])} | ${ms(r.wall[1])} / ${ms(r.cpu[1])} | ${r3(r.wall[1], r.wall[0])} / ${r3(r.cpu[1], r.cpu[0])} |`);
    }
    out.push('', `Median ratio over the rounds: wall ${median(ratios.wall).toFixed(3)}×, CPU ${median(ratios.cpu).toFixed(3)}×.`, '');

    // Idle: the daemon leaves after IDLE_S s without a request, the supervisor rests after REST_S s
    // with nothing to do (its command line then starts with fscache-guard --rest); then read every fscache process.
    const idleFrom = Date.now();
    const cmdlines = () => processesOfRoot(vr.root).map((pid) => fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8'));
    while ((cmdlines().some((c) => c.includes('\0daemon')) || !cmdlines().some((c) => c.includes('\0--rest\0'))) && Date.now() - idleFrom < 60_000) {
      await new Promise((r) => setTimeout(r, 500));
    }
    await new Promise((r) => setTimeout(r, 1000));
    out.push('### fscache\'s own footprint at idle after those launches', '',
      `Every process of the root (its path in the command line: the supervisor, at rest after ${REST_S} s with nothing to do, the view, the guard;`,
      `the daemon left after ${IDLE_S} s without a request), from /proc/PID/smaps_rollup. RSS counts the pages of the node binary once per Node`,
      'process; PSS shares them out.', '');
    out.push('| process | RSS | PSS |', '|---|---|---|');
    let rss = 0;
    let pss = 0;
    for (const pid of processesOfRoot(vr.root)) {
      const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      const verb = argv[1] === '--rest' ? '--rest (the supervisor at rest)' : argv.includes('--root') ? argv.slice(argv.indexOf('--root') + 2).filter(Boolean).join(' ') : '(guard)';
      const [r, p] = [rollup(pid, 'Rss'), rollup(pid, 'Pss')];
      rss += r;
      pss += p;
      out.push(`| ${path.basename(argv[0])} ${verb} | ${(r / 1024).toFixed(1)} MiB | ${(p / 1024).toFixed(1)} MiB |`);
    }
    out.push(`| all | ${(rss / 1024).toFixed(1)} MiB | ${(pss / 1024).toFixed(1)} MiB |`, '');
    out.push(`Load average during the run: ${fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}.`);
  } finally {
    vr.cli('stop');
    await new Promise((r) => setTimeout(r, 1500));
    vr.dispose();
  }
  process.stdout.write(out.join('\n') + '\n');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
