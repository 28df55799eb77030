/**
 * The supervisor's reaction times: from a fault of the view (kill -9, SIGSTOP, an aborted
 * FUSE connection) to R/usr back on the real tree, and how long a launch caught in a hang
 * waits; then the supervisor's and the view's memory at idle. A fresh start per run (the
 * back-off would otherwise grow), medians over the runs.
 * Run (as root): node dist/bench/supervisor.js [RUNS]   (default 5)
 */
import { execFile, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { parseConfig } from '../core/config';
import { abortConnection, fuseMountAt, fuseMountsBelow } from '../fs/fuse/fusectl';
import { readLinkState } from '../fs/switch/link';
import { derivePaths, Paths } from '../core/paths';
import { makeSandbox, Sandbox } from '../dev/sandbox';
import { readSupervisorState } from '../fs/service/supervisor';
import { CLI_ENTRY } from '../fs/service/view-process';

const RUNS = Number(process.argv[2] ?? 5);
const CONFIG = `hook = off\n${process.env.FSCACHE_BENCH_SESSION ? `fuse_session = ${process.env.FSCACHE_BENCH_SESSION}\n` : ''}`;

type Fault = 'kill -9' | 'SIGSTOP' | 'abort';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

function cli(sandbox: Sandbox, args: string[]) {
  const r = spawnSync(process.execPath, [CLI_ENTRY, '--root', sandbox.root, ...args], { encoding: 'utf8', timeout: 60000 });
  if (r.status !== 0) throw new Error(`fscache ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
}

/** Milliseconds until `check` holds, polled every millisecond; -1 after `timeoutMs`. */
async function until(check: () => boolean, timeoutMs: number): Promise<number> {
  const t0 = performance.now();
  while (performance.now() - t0 < timeoutMs) {
    if (check()) return performance.now() - t0;
    await sleep(1);
  }
  return -1;
}

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

/** A launch that reaches the view's process (a lookup of a fresh name); resolves with its duration. */
function caughtLaunch(sandbox: Sandbox): Promise<number> {
  const [cmd, args] = sandbox.chrootArgs(['/usr/bin/sh', '-c', `test -e /usr/lib/bench-${process.hrtime.bigint()}`]);
  const t0 = performance.now();
  return new Promise((resolve) => execFile(cmd, args, { timeout: 30000 }, () => resolve(performance.now() - t0)));
}

async function oneRun(fault: Fault): Promise<{ flipMs: number; caughtMs?: number }> {
  const sandbox = makeSandbox({ prefix: 'fscache-bench-sup-' });
  fs.writeFileSync(path.join(sandbox.root, 'etc', 'fscache.conf'), CONFIG);
  const paths: Paths = derivePaths(sandbox.root, parseConfig(CONFIG, 'bench config'));
  let stopped: number | undefined;
  try {
    cli(sandbox, ['start']);
    await sleep(1500); // a few probes answered
    const viewPid = JSON.parse(fs.readFileSync(paths.viewState, 'utf8')).pid as number;
    const onReal = () => readLinkState(paths).state === 'real';
    let caught: Promise<number> | undefined;
    if (fault === 'kill -9') process.kill(viewPid, 'SIGKILL');
    if (fault === 'SIGSTOP') {
      stopped = viewPid;
      process.kill(viewPid, 'SIGSTOP');
      caught = caughtLaunch(sandbox);
    }
    if (fault === 'abort') abortConnection(fuseMountAt(paths.viewMount)!.minor);
    const flipMs = await until(onReal, 10000);
    return { flipMs, caughtMs: caught && (await caught) };
  } finally {
    if (stopped) spawnSync('kill', ['-CONT', String(stopped)]);
    for (const m of fuseMountsBelow(sandbox.root)) abortConnection(m.minor);
    spawnSync(process.execPath, [CLI_ENTRY, '--root', sandbox.root, 'stop'], { timeout: 30000 });
    sandbox.cleanup();
  }
}

/** The supervisor's guard (guard/fscache-guard), found as its child by name. */
function guardPid(supervisor: number): number | undefined {
  for (const name of fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (comm === 'fscache-guard' && ppid === supervisor) return Number(name);
    } catch {
      // gone
    }
  }
  return undefined;
}

async function idleMemory(): Promise<{ supervisor: number; view: number; guard: number | undefined }> {
  const sandbox = makeSandbox({ prefix: 'fscache-bench-sup-' });
  fs.writeFileSync(path.join(sandbox.root, 'etc', 'fscache.conf'), CONFIG);
  const paths = derivePaths(sandbox.root, parseConfig(CONFIG, 'bench config'));
  try {
    cli(sandbox, ['start']);
    await sleep(10000);
    const sup = readSupervisorState(paths)!.pid;
    const view = JSON.parse(fs.readFileSync(paths.viewState, 'utf8')).pid as number;
    const guard = guardPid(sup);
    return { supervisor: rssKiB(sup), view: rssKiB(view), guard: guard && rssKiB(guard) };
  } finally {
    spawnSync(process.execPath, [CLI_ENTRY, '--root', sandbox.root, 'stop'], { timeout: 30000 });
    sandbox.cleanup();
  }
}

async function main(): Promise<void> {
  if (process.argv.includes('--memory-only')) return printMemory(await idleMemory());
  console.log(`supervisor reaction times, ${RUNS} runs per fault, session ${process.env.FSCACHE_BENCH_SESSION ?? 'kernel (default)'}`);
  console.log('| fault | link back on the real tree, median (min–max) | launch caught in the hang ends after, median |');
  console.log('|---|---|---|');
  for (const fault of ['kill -9', 'SIGSTOP', 'abort'] as Fault[]) {
    const runs: Array<{ flipMs: number; caughtMs?: number }> = [];
    for (let i = 0; i < RUNS; i++) runs.push(await oneRun(fault));
    const flips = runs.map((r) => r.flipMs);
    const caught = runs.map((r) => r.caughtMs).filter((x): x is number => x !== undefined);
    console.log(`| ${fault} | ${median(flips).toFixed(0)} ms (${Math.min(...flips).toFixed(0)}–${Math.max(...flips).toFixed(0)}) | ${caught.length ? `${median(caught).toFixed(0)} ms` : '–'} |`);
  }
  printMemory(await idleMemory());
}

function printMemory(mem: { supervisor: number; view: number; guard: number | undefined }): void {
  console.log(`\nRSS after 10 s idle: supervisor ${(mem.supervisor / 1024).toFixed(1)} MiB, view ${(mem.view / 1024).toFixed(1)} MiB, ` +
    `guard ${mem.guard === undefined ? 'not running' : `${mem.guard} KiB`}`);
}

void main();
