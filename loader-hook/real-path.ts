/**
 * Where a path, as a process in R names it, lies in the real tree: resolved one component at a
 * time like the kernel would, except that R/usr (the link) and the view's mount point both stand
 * for the real tree and are never entered. So `/usr/lib/x.so`, `/lib/x.so` (R/lib -> usr/lib) and
 * the view's own name of the file all come out as R/usr.real/lib/x.so, whichever way the link points.
 *
 * Why not realpath(): it follows R/usr into the view (no fscache process resolves a path through
 * the view: a hung view would hang the daemon), and an absolute link target would leave R.
 */
import * as fs from 'fs';
import * as path from 'path';
import type { Paths } from '../core/paths';

/** Linux's own limit on links followed in one resolution. */
const MAX_LINKS = 40;

export class RealPathError extends Error {
  constructor(readonly code: 'ENOENT' | 'ENOTDIR' | 'ELOOP' | 'EOUTSIDE', message: string) {
    super(message);
  }
}

/** Host paths that stand for the real tree: never lstat'ed, never entered. */
function standsForRealTree(paths: Paths, p: string): boolean {
  if (p === paths.viewMount) return true;
  if (p !== paths.usrLink) return false;
  // The link only: a real directory at R/usr (before setup) is itself.
  try {
    return fs.lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

/**
 * The host path of the object `name` (absolute, as seen from R) resolves to, with every link
 * followed inside R and the link and the view mapped to the real tree. Throws RealPathError.
 */
export function realTreePath(paths: Paths, name: string): string {
  if (!name.startsWith('/')) throw new RealPathError('EOUTSIDE', `${name} is not absolute`);
  const todo = name.split('/').filter((c) => c !== '' && c !== '.').reverse();
  let cur = paths.root;
  let links = 0;
  while (todo.length) {
    const comp = todo.pop()!;
    if (comp === '..') {
      // Never above R, as in a chroot of R.
      if (cur !== paths.root) cur = path.dirname(cur);
      continue;
    }
    let next = path.join(cur, comp);
    if (standsForRealTree(paths, next)) next = paths.realTree;
    let st: fs.Stats;
    try {
      st = fs.lstatSync(next);
    } catch {
      throw new RealPathError('ENOENT', `${next} does not exist`);
    }
    if (st.isSymbolicLink()) {
      if (++links > MAX_LINKS) throw new RealPathError('ELOOP', `too many links resolving ${name}`);
      const target = fs.readlinkSync(next);
      if (target.startsWith('/')) cur = paths.root; // absolute: from R, as inside a chroot of R
      todo.push(...target.split('/').filter((c) => c !== '' && c !== '.').reverse());
      continue;
    }
    if (todo.length && !st.isDirectory()) throw new RealPathError('ENOTDIR', `${next} is not a directory`);
    cur = next;
  }
  return cur;
}

/** realTreePath, or undefined when the name does not resolve. */
export function realTreePathOrUndefined(paths: Paths, name: string): string | undefined {
  try {
    return realTreePath(paths, name);
  } catch (e) {
    if (e instanceof RealPathError) return undefined;
    throw e;
  }
}
