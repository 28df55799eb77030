/**
 * Running a program that may block on a FUSE mount, with a deadline. A process waiting on a
 * request the server already read is in D state and ignores SIGKILL (the project's FINDINGS.md, ../shared beside the repository); only
 * aborting the connection frees it. So at the deadline the program is killed and, if it has
 * not ended a second later, the connections of the FUSE mounts below `abortBelow` are aborted
 * through fusectl (their numbers read from /proc/self/mountinfo: a stat of a mount point would
 * hang too). The result says whether the deadline was hit; it never hangs.
 */
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import { abortConnection, FUSECTL_DIR, fuseMountsBelow } from '../../fs/fuse/fusectl';
import { mountTable } from '../../core/mounts';

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
  timedOut: boolean;
}

export interface BoundedOptions {
  /** The FUSE mounts at or below this directory are aborted if the program outlives its deadline. */
  abortBelow: string;
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  input?: string;
}

/** Aborts the connections of every FUSE mount at or below `dir` (fusectl mounted first if it is not). */
export function abortFuseBelow(dir: string): void {
  const mounts = fuseMountsBelow(dir);
  if (mounts.length === 0) return;
  if (!mountTable().some((m) => m.mountPoint === FUSECTL_DIR && m.fstype === 'fusectl')) {
    spawnSync('mount', ['-t', 'fusectl', 'fusectl', FUSECTL_DIR], { timeout: 5000 });
  }
  for (const m of mounts) {
    try {
      abortConnection(m.minor);
    } catch {
      // gone meanwhile
    }
  }
}

export function runBounded(cmd: string, args: string[], o: BoundedOptions): Promise<RunResult> {
  const t0 = Date.now();
  const child = spawn(cmd, args, { env: o.env ?? process.env, cwd: '/', stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  child.stdin!.on('error', () => undefined);
  child.stdin!.end(o.input ?? '');
  return new Promise((resolve) => {
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
      // Still there a second later: stuck on a FUSE request, which only an abort ends.
      setTimeout(() => {
        if (child.exitCode === null && child.signalCode === null) abortFuseBelow(o.abortBelow);
      }, 1000);
    }, o.timeoutMs ?? 60000);
    child.on('error', (err) => {
      stderr += String(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - t0, timedOut });
    });
  });
}

/**
 * Every process (but this one) working in or for `root`: its root directory at or below R
 * (run by chroot R), or an argument naming R or a path below it (fscache --root R, rsync, a guard).
 */
export function processesOfRoot(root: string): number[] {
  const inRoot = (p: string) => p === root || p.startsWith(root + '/');
  const pids: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      if (inRoot(fs.readlinkSync(`/proc/${name}/root`)) || fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').some(inRoot)) pids.push(Number(name));
    } catch {
      // exited, or a kernel thread
    }
  }
  return pids;
}
