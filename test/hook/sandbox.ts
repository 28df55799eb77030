/**
 * A sandbox root for the loader-hook tests: R under the system temp dir (root-owned 0755), the
 * randomizable zlib and SQLite of test/elf/libs.ts copied to R/lib, an auditor compiled for R,
 * the consumer program linked against R/lib, and the daemon as a child process.
 * Nothing outside R and the library cache is touched.
 */
import { ChildProcess, execFileSync, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { buildSqlite, buildZlib, CFLAGS, LDFLAGS, REPO, SQLITE_C } from '../elf/libs';

export const FIX = path.join(REPO, 'test', 'hook', 'fixtures');
export const CLI = path.join(REPO, 'dist', 'cli', 'main.js');

export interface Libs { zlib: string; sqlite: string; zlibInclude: string; sqliteInclude: string }

export function libs(): Libs | { skip: string } {
  const z = buildZlib();
  if (!z.ok) return { skip: z.skip };
  const s = buildSqlite();
  if (!s.ok) return { skip: s.skip };
  const zsrc = fs.readdirSync(z.dir).find((n) => n.startsWith('zlib') && fs.statSync(path.join(z.dir, n)).isDirectory());
  return { zlib: z.lib, sqlite: s.lib, zlibInclude: path.join(z.dir, zsrc!), sqliteInclude: path.dirname(SQLITE_C) };
}

export interface Sandbox {
  root: string;
  lib: string;
  auditor: string;
  consumer: string;
  conf: string;
  daemon?: ChildProcess;
}

export function writeConf(sb: Sandbox, extra: Record<string, string> = {}): void {
  const keys = { on_miss: 'wait', miss_wait_ms: '30000', library_dirs: 'lib', ...extra };
  fs.writeFileSync(sb.conf, Object.entries(keys).map(([k, v]) => `${k} = ${v}\n`).join(''));
}

export function makeSandbox(l: Libs): Sandbox {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-hook-'));
  fs.chmodSync(root, 0o755);
  const lib = path.join(root, 'lib');
  fs.mkdirSync(lib, { mode: 0o755 });
  fs.mkdirSync(path.join(root, 'etc'), { mode: 0o755 });
  for (const f of [l.zlib, l.sqlite]) installLib(f, path.join(lib, path.basename(f)));
  const auditor = path.join(root, 'audit.so');
  execFileSync('make', ['-s', '-C', path.join(REPO, 'loader-hook'), `ROOT=${root}`, `OUT=${auditor}`], { stdio: 'pipe' });
  const consumer = path.join(root, 'consumer');
  execFileSync('gcc', ['-O2', `-I${l.zlibInclude}`, `-I${l.sqliteInclude}`, path.join(FIX, 'consumer.c'), '-o', consumer,
    `-Wl,-rpath,${lib}`, `-L${lib}`, '-l:libsqlite3.so.0', '-l:libz.so.1', '-ldl'], { stdio: 'pipe' });
  const sb: Sandbox = { root, lib, auditor, consumer, conf: path.join(root, 'etc', 'fscache.conf') };
  writeConf(sb);
  return sb;
}

/** Copies a library into place as the daemon wants it: root-owned, 0644. */
export function installLib(from: string, to: string): void {
  const tmp = `${to}.tmp`;
  fs.copyFileSync(from, tmp);
  fs.chmodSync(tmp, 0o644);
  fs.renameSync(tmp, to);
}

/** Builds liba.so (RUNPATH $ORIGIN, needs libb.so) and libb.so into `dir`, randomizable. */
export function buildOriginLibs(dir: string): void {
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  const flags = [...CFLAGS.split(' '), '-O1', '-fno-inline', '-shared', LDFLAGS];
  execFileSync('gcc', [...flags, path.join(FIX, 'libb.c'), '-o', path.join(dir, 'libb.so')], { stdio: 'pipe' });
  execFileSync('gcc', [...flags, path.join(FIX, 'liba.c'), '-o', path.join(dir, 'liba.so'), `-L${dir}`, '-lb',
    '-Wl,--enable-new-dtags', "-Wl,-rpath,$ORIGIN"], { stdio: 'pipe' });
  for (const f of ['liba.so', 'libb.so']) fs.chmodSync(path.join(dir, f), 0o644);
}

/** Starts `fscache daemon` for the sandbox; its log goes to R/daemon.log (read by `randomizations`). */
export async function startDaemon(sb: Sandbox): Promise<void> {
  const logFile = path.join(sb.root, 'daemon.log');
  const log = fs.openSync(logFile, 'a');
  const child = spawn(process.execPath, [CLI, '--root', sb.root, 'daemon'], { stdio: ['ignore', 'ignore', log] });
  fs.closeSync(log);
  sb.daemon = child;
  const sock = path.join(sb.root, 'run', 'fscache', 'hook.sock');
  for (let i = 0; i < 400; i++) {
    if (child.exitCode !== null) throw new Error(`daemon exited: ${daemonLog(sb)}`);
    if (await answers(sock)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`daemon did not listen: ${daemonLog(sb)}`);
}

function answers(sock: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(sock);
    c.once('connect', () => { c.destroy(); resolve(true); });
    c.once('error', () => resolve(false));
  });
}

export function daemonLog(sb: Sandbox): string {
  try {
    return fs.readFileSync(path.join(sb.root, 'daemon.log'), 'utf8');
  } catch {
    return '';
  }
}

export async function stopDaemon(sb: Sandbox, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  const d = sb.daemon;
  sb.daemon = undefined;
  if (!d || d.exitCode !== null || d.signalCode !== null) return;
  const exited = new Promise((r) => d.once('exit', r));
  d.kill(signal);
  await exited;
}

export function cli(sb: Sandbox, ...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, '--root', sb.root, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

export interface Launch { status: number | null; out: string; maps: Map<string, number>; ms: number }

function parseMaps(out: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of out.split('\n')) {
    const x = /^map (.+?)(?: \(deleted\))? (\d+)$/.exec(line);
    if (x) m.set(x[1], Number(x[2]));
  }
  return m;
}

/** Runs the consumer (or `file`) with the sandbox's auditor. */
export function launch(sb: Sandbox, env: Record<string, string> = {}, args: string[] = [], file = sb.consumer): Launch {
  const t0 = Date.now();
  const r = spawnSync(file, args, { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LD_AUDIT: sb.auditor, ...env }, encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, out: r.stdout + r.stderr, maps: parseMaps(r.stdout), ms: Date.now() - t0 };
}

export function launchAsync(sb: Sandbox, args: string[] = []): Promise<Launch> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const c = spawn(sb.consumer, args, { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LD_AUDIT: sb.auditor }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (out += d));
    c.on('close', (status) => resolve({ status, out, maps: parseMaps(out), ms: Date.now() - t0 }));
  });
}

export function imagePaths(l: Launch, sb: Sandbox): string[] {
  return [...l.maps.keys()].filter((p) => p.startsWith(path.join(sb.root, 'fscache', 'images') + '/'));
}

export function removeSandbox(sb: Sandbox): void {
  fs.rmSync(sb.root, { recursive: true, force: true });
}

/** The image path the hook would use for `lib` in epoch `epoch` (the key as audit.c computes it). */
export function imageFor(sb: Sandbox, lib: string, epoch: string): string {
  const st = fs.statSync(lib, { bigint: true });
  const key = [st.dev, st.ino, st.size, st.mtimeNs].map((v) => v.toString(16)).join('-');
  return path.join(sb.root, 'fscache', 'images', epoch, `${key}.so`);
}

export function currentEpoch(sb: Sandbox): string {
  return fs.readFileSync(path.join(sb.root, 'run', 'fscache', 'epoch'), 'utf8').split(' ')[0];
}

export function randomizations(sb: Sandbox, lib: string): number {
  return daemonLog(sb).split('\n').filter((s) => s.includes('hook: randomized') && s.includes(`/${lib} ->`)).length;
}
