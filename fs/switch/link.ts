/**
 * The R/usr switch. The link's target is relative, so it resolves the same inside a
 * chroot of R. It is changed atomically: a new symlink under a temporary name, then
 * rename(2) over the old one, so every path lookup sees the old or the new target; then
 * the directory is synced, so that the link a power cut leaves is the last one set.
 *
 * The view and the mirror are both mounted at the view's mount point (R/usr.view), so
 * they share one target; what is mounted there tells them apart. Unmounted, that
 * directory is the real tree by its links (fs/view/view-dir.ts): every target is safe to boot.
 */
import * as fs from 'fs';
import * as path from 'path';
import type { Mode } from '../../core/config';
import { errnoCode } from '../../core/errors';
import { isFuse, mountAt } from '../../core/mounts';
import type { Paths } from '../../core/paths';

export type LinkTarget = 'real' | 'view' | 'mirror';
export type LinkState = LinkTarget | 'directory' | 'missing' | 'foreign';

export function linkTargetPath(paths: Paths, target: LinkTarget): string {
  const dest = target === 'real' ? paths.realTree : paths.viewMount;
  return path.relative(path.dirname(paths.usrLink), dest);
}

/**
 * Where R/usr points. At the view's mount point: 'view' when a FUSE view is mounted there,
 * 'mirror' when something else is (the read-only bind of the mirror), and with nothing
 * mounted, `mode` (the configured one): the links underneath serve the real tree meanwhile.
 */
export function readLinkState(paths: Paths, mode: Mode = 'view'): { state: LinkState; target: string | null } {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(paths.usrLink);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return { state: 'missing', target: null };
    throw err;
  }
  if (st.isDirectory()) return { state: 'directory', target: null };
  if (!st.isSymbolicLink()) return { state: 'foreign', target: null };
  const target = fs.readlinkSync(paths.usrLink);
  if (target === linkTargetPath(paths, 'real')) return { state: 'real', target };
  if (target === linkTargetPath(paths, 'view')) {
    const top = mountAt(paths.viewMount);
    return { state: top ? (isFuse(top) ? 'view' : 'mirror') : mode, target };
  }
  return { state: 'foreign', target };
}

/** The temporary name a new link is made under before it is renamed into place. */
export function pendingLinkPath(paths: Paths): string {
  return `${paths.usrLink}.fscache-new`;
}

/** Makes the new link under the temporary name; returns that name. */
export function makePendingLink(paths: Paths, target: LinkTarget): string {
  const pending = pendingLinkPath(paths);
  // A leftover from an interrupted switch or setup is ours only if it is a symlink.
  try {
    if (fs.lstatSync(pending).isSymbolicLink()) fs.unlinkSync(pending);
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') throw err;
  }
  fs.symlinkSync(linkTargetPath(paths, target), pending);
  return pending;
}

/** fsync(2) of a directory: makes the renames, creations and removals in it durable. */
export function syncDir(dir: string): void {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

export function switchLink(paths: Paths, target: LinkTarget): void {
  fs.renameSync(makePendingLink(paths, target), paths.usrLink);
  // rename(2) is atomic for lookups at once, not on disk: until the directory is synced, a
  // power cut may bring back the previous link. The next boot must find the last one set.
  syncDir(path.dirname(paths.usrLink));
}
