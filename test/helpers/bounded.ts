/**
 * Running a program against a FUSE mount with a deadline. A process waiting on a request
 * the server already read is in D state and ignores SIGKILL (FINDINGS.md); only aborting
 * the connection frees it. So at the deadline the mount's connection is aborted through
 * fusectl, its number read from /proc/self/mountinfo (a stat of the mount point would hang
 * too), the program is killed and the run fails.
 */
import { execFileSync, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { isMountPoint } from '../../fs/preflight';

export interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runBounded(cmd: string, args: string[], mountpoint: string, timeoutMs = 10000): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      abortConnection(mountpoint);
      child.kill('SIGKILL');
      reject(new Error(`${cmd} ${args.join(' ')}: no answer within ${timeoutMs} ms; the connection of ${mountpoint} was aborted`));
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** The FUSE connection number of the mount at `mountpoint` (its device minor), if mounted. */
export function connectionOf(mountpoint: string): number | undefined {
  let minor: number | undefined;
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const fields = line.split(' ');
    const where = fields[4]?.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
    // The last of stacked mounts is the one in use.
    if (where === mountpoint) minor = Number(fields[2].split(':')[1]);
  }
  return minor;
}

/** Aborts the FUSE connection at `mountpoint`: requests waiting on it fail, their processes end. */
export function abortConnection(mountpoint: string): void {
  const n = connectionOf(mountpoint);
  if (n === undefined) return;
  // A private fusectl mount: nothing is left mounted on the host.
  const ctl = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-fusectl-'));
  try {
    execFileSync('mount', ['-t', 'fusectl', 'fscache-test-fusectl', ctl]);
    fs.writeFileSync(path.join(ctl, String(n), 'abort'), '1');
  } finally {
    if (isMountPoint(ctl)) execFileSync('umount', [ctl]);
    fs.rmdirSync(ctl);
  }
}
