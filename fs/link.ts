/**
 * The R/usr switch. The link's target is relative, so it resolves the same inside a
 * chroot of R. It is changed atomically: a new symlink under a temporary name, then
 * rename(2) over the old one, so every path lookup sees the old or the new target.
 */
import * as fs from 'fs';
import * as path from 'path';
import { errnoCode } from './errors';
import type { Paths } from './paths';

export type LinkTarget = 'real' | 'view' | 'mirror';
export type LinkState = LinkTarget | 'directory' | 'missing' | 'foreign';

export function linkTargetPath(paths: Paths, target: LinkTarget): string {
  const dest = target === 'real' ? paths.realTree : target === 'view' ? paths.viewMount : paths.mirror;
  return path.relative(path.dirname(paths.usrLink), dest);
}

export function readLinkState(paths: Paths): { state: LinkState; target: string | null } {
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
  for (const t of ['real', 'view', 'mirror'] as const) {
    if (target === linkTargetPath(paths, t)) return { state: t, target };
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

export function switchLink(paths: Paths, target: LinkTarget): void {
  fs.renameSync(makePendingLink(paths, target), paths.usrLink);
}
