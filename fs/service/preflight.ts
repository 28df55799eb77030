/** Checks made before mounting the view: each failure is one clear line and an exit code. */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { errnoCode, FsCacheError } from '../../core/errors';
import { isFuse, mountAt } from '../../core/mounts';
import type { Paths } from '../../core/paths';
import { programPath } from './programs';
import { refreshViewDir } from '../view/view-dir';

export { isMountPoint, mountsBelow } from '../../core/mounts';

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

/**
 * Prepares the view's mount point: clears a dead mount left by a killed view (ENOTCONN),
 * refuses a live mount, then refreshes the links to the real tree underneath (fs/view/view-dir.ts),
 * which also refuses anything there that fscache did not put there.
 */
export function prepareMountPoint(paths: Paths): void {
  const mountpoint = paths.viewMount;
  const top = mountAt(mountpoint);
  if (top) {
    if (!isFuse(top)) throw new FsCacheError('busy', `${mountpoint} has a ${top.fstype} file system mounted on it (the mirror? see 'fscache status')`);
    let alive = true;
    try {
      fs.readdirSync(mountpoint);
    } catch (err) {
      alive = errnoCode(err) !== 'ENOTCONN';
    }
    if (alive) throw new FsCacheError('busy', `${mountpoint} is already mounted (is the view running? see 'fscache status')`);
    // umount(8) from the real tree, not through PATH (fs/service/programs.ts); bounded like every exec here.
    execFileSync(programPath(paths, 'umount'), ['-l', mountpoint], { stdio: 'ignore', timeout: 10000 });
  }
  refreshViewDir(paths);
}
