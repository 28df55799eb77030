/** Checks made before mounting the view: each failure is one clear line and an exit code. */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { errnoCode, FsCacheError } from './errors';
import type { Paths } from './paths';

export const FUSE_DEVICE = '/dev/fuse';

export function checkFuseDevice(): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(FUSE_DEVICE);
  } catch {
    throw new FsCacheError('environment', `${FUSE_DEVICE} is missing: load the fuse module (modprobe fuse) or give the container the device`);
  }
  if (!st.isCharacterDevice()) throw new FsCacheError('environment', `${FUSE_DEVICE} is not a character device`);
}

export function checkRealTree(paths: Paths): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(paths.realTree);
  } catch {
    throw new FsCacheError('environment', `the real tree ${paths.realTree} is missing (set real_tree, or run 'fscache setup --yes')`);
  }
  if (!st.isDirectory()) throw new FsCacheError('environment', `the real tree ${paths.realTree} is not a directory`);
  // The view reading itself would deadlock its own process (FINDINGS: D state for good).
  const real = fs.realpathSync(paths.realTree);
  const mount = path.resolve(paths.viewMount);
  if (real === mount || real.startsWith(mount + '/') || mount.startsWith(real + '/')) {
    throw new FsCacheError('usage', `real_tree ${paths.realTree} resolves to ${real}, which overlaps the view's mount point ${mount}`);
  }
}

function mountPoints(): string[] {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter(Boolean).map((line) => unescapeMount(line.split(' ')[4] ?? ''));
}

export function isMountPoint(dir: string): boolean {
  const wanted = path.resolve(dir);
  return mountPoints().includes(wanted);
}

/** Mount points at or below `dir`, deepest first. */
export function mountsBelow(dir: string): string[] {
  const base = path.resolve(dir);
  return mountPoints().filter((m) => m === base || m.startsWith(base + '/')).sort((a, b) => b.length - a.length);
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct) => String.fromCharCode(parseInt(oct, 8)));
}

/**
 * Prepares the mount point: creates it, clears a dead mount left by a killed view
 * (ENOTCONN), refuses a live mount or a non-empty directory.
 */
export function prepareMountPoint(mountpoint: string): void {
  fs.mkdirSync(path.dirname(mountpoint), { recursive: true });
  try {
    fs.mkdirSync(mountpoint);
  } catch (err) {
    if (errnoCode(err) !== 'EEXIST' && errnoCode(err) !== 'ENOTCONN') throw err;
  }
  if (isMountPoint(mountpoint)) {
    let alive = true;
    try {
      fs.readdirSync(mountpoint);
    } catch (err) {
      alive = errnoCode(err) !== 'ENOTCONN';
    }
    if (alive) throw new FsCacheError('busy', `${mountpoint} is already mounted (is the view running? see 'fscache status')`);
    execFileSync('fusermount', ['-uz', mountpoint], { stdio: 'ignore' });
  }
  if (fs.readdirSync(mountpoint).length > 0) {
    throw new FsCacheError('busy', `mount point ${mountpoint} is not empty`);
  }
}
