/**
 * Shared pieces of the benchmarks: sandboxes in three flavours over the same real
 * tree (native, the fscache view, bindfs), hyperfine runs, medians and ratios.
 * Benchmarks compare within one run; they never assert a time.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { defaultConfig } from '../core/config';
import { derivePaths } from '../core/paths';
import { isMountPoint } from '../fs/service/preflight';
import { makeSandbox, Sandbox } from '../dev/sandbox';
import { startViewProcess, ViewProcess } from '../fs/service/view-process';

export type Flavour = 'native' | 'view' | 'bindfs';

export interface BenchRoot {
  flavour: Flavour;
  sandbox: Sandbox;
  view?: ViewProcess;
  dispose(): Promise<void>;
}

/** The same cache options the view's libfuse2 session uses, for a fair bindfs. */
export const BINDFS_OPTIONS = 'ro,auto_cache,attr_timeout=1,entry_timeout=1,negative_timeout=1,allow_other';

export async function makeBenchRoot(flavour: Flavour, options: { hostUsr?: string; config?: string } = {}): Promise<BenchRoot> {
  const sandbox = makeSandbox({ hostUsr: options.hostUsr, prefix: `fscache-bench-${flavour}-` });
  const paths = derivePaths(sandbox.root, defaultConfig());
  let view: ViewProcess | undefined;
  try {
    if (options.config) fs.writeFileSync(path.join(sandbox.root, 'etc', 'fscache.conf'), options.config);
    if (flavour === 'native') {
      fs.unlinkSync(paths.usrLink);
      fs.symlinkSync('usr.real', paths.usrLink);
    } else if (flavour === 'view') {
      view = await startViewProcess(sandbox.root, paths.viewMount, paths.viewState);
    } else {
      fs.mkdirSync(paths.viewMount, { recursive: true });
      execFileSync('bindfs', ['-o', BINDFS_OPTIONS, paths.realTree, paths.viewMount]);
    }
  } catch (err) {
    sandbox.cleanup();
    throw err;
  }
  return {
    flavour,
    sandbox,
    view,
    async dispose() {
      await view?.stop();
      if (isMountPoint(paths.viewMount)) execFileSync('fusermount', ['-uz', paths.viewMount]);
      sandbox.cleanup();
    },
  };
}

export interface HyperfineResult {
  command: string;
  median: number;
  mean: number;
  stddev: number;
  runs: number;
}

/** Runs hyperfine over the commands (interleaving is hyperfine's per-command order) and returns medians in ms. */
export function hyperfine(commands: string[], options: { runs?: number; warmup?: number; prepare?: string } = {}): HyperfineResult[] {
  const out = path.join(os.tmpdir(), `fscache-hyperfine-${process.pid}.json`);
  const args = ['-N', '--style', 'none', '--export-json', out, '--runs', String(options.runs ?? 30), '--warmup', String(options.warmup ?? 3)];
  if (options.prepare) args.push('--prepare', options.prepare);
  const r = spawnSync('hyperfine', [...args, ...commands], { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'] });
  if (r.status !== 0) throw new Error(`hyperfine failed: ${r.stderr}`);
  const json = JSON.parse(fs.readFileSync(out, 'utf8')) as { results: Array<{ command: string; median: number; mean: number; stddev: number; times: number[] }> };
  fs.rmSync(out, { force: true });
  return json.results.map((x) => ({ command: x.command, median: x.median * 1000, mean: x.mean * 1000, stddev: (x.stddev ?? 0) * 1000, runs: x.times.length }));
}

export const ms = (n: number) => `${n.toFixed(1)} ms`;

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/**
 * Runs both, `a` first in even rounds and `b` first in odd ones: the first of a pair pays for
 * what the caches lost meanwhile, so each order runs equally often over an even number of rounds.
 */
export function alternating(round: number, a: () => void, b: () => void): void {
  if (round % 2) {
    b();
    a();
  } else {
    a();
    b();
  }
}
export const ratio = (n: number, base: number) => `${(n / base).toFixed(2)}×`;

export function dropCaches(): void {
  execFileSync('sync');
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
}

export function chrootCommand(root: string, argv: string[]): string {
  const chroot = ['/usr/sbin/chroot', '/sbin/chroot'].find((p) => fs.existsSync(p)) ?? 'chroot';
  return [chroot, root, ...argv].map((a) => (/^[\w./=-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

export const LAUNCHES: Array<{ label: string; argv: string[] }> = [
  { label: 'git --version', argv: ['/usr/bin/git', '--version'] },
  { label: 'curl --version', argv: ['/usr/bin/curl', '--version'] },
  { label: 'perl -e 1', argv: ['/usr/bin/perl', '-e', '1'] },
  { label: 'python3 -c pass', argv: ['/usr/bin/python3', '-c', 'pass'] },
  { label: "python3 -c 'import json, zlib, sqlite3'", argv: ['/usr/bin/python3', '-c', 'import json, zlib, sqlite3'] },
];

/**
 * Runs loader-hook/launchtimer.c (built at `timer`) over `variants` (env as VAR=VALUE or '-', argv),
 * `rounds` launches each, interleaved launch by launch; the median wall and CPU (the child's user +
 * system time) ms of each variant.
 */
export function launchtimer(timer: string, rounds: number, variants: Array<[string, string[]]>): { wall: number[]; cpu: number[] } {
  const args = variants.flatMap(([env, argv], i) => [...(i ? [';;'] : []), env, '--', ...argv]);
  const text = execFileSync(timer, [String(rounds), ...args], { maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'ignore'] }).toString();
  const wall: number[][] = variants.map(() => []);
  const cpu: number[][] = variants.map(() => []);
  for (const line of text.trim().split('\n')) {
    const [v, w, c] = line.split(' ').map(Number);
    wall[v].push(w / 1000);
    cpu[v].push(c / 1000);
  }
  return { wall: wall.map(median), cpu: cpu.map(median) };
}
