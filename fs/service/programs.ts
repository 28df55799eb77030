/**
 * Programs fscache runs (mount, fusermount, umount, rsync), found by absolute path in the
 * real tree, never through PATH: on a real machine PATH leads through R/usr, which may be
 * the view, and a view process that waits for an exec resolved through itself deadlocks.
 * A program's loader and libraries still come through R/usr, so the view and the supervisor
 * run them only while R/usr points at the real tree (or before the view is mounted).
 */
import * as fs from 'fs';
import * as path from 'path';
import { FsCacheError } from '../../core/errors';
import type { Paths } from '../../core/paths';

/** Where a program may live, as directories under R: a non-merged root's /bin and /sbin first. */
function searchDirs(paths: Paths): string[] {
  const dirs: string[] = [];
  for (const top of ['bin', 'sbin']) {
    const dir = path.join(paths.root, top);
    // A merged-/usr root's /bin is a link into R/usr: that is the real tree's bin, looked up below.
    try {
      if (fs.lstatSync(dir).isDirectory()) dirs.push(dir);
    } catch {
      // no such directory
    }
  }
  for (const sub of ['bin', 'sbin']) dirs.push(path.join(paths.realTree, sub));
  // Run from outside R (tests, the demo, --root R): the host's own /usr is not the view.
  if (paths.root !== '/') dirs.push('/usr/sbin', '/usr/bin');
  return dirs;
}

/** The absolute path of `name` in the root's system directories or the real tree, or undefined; never searched in PATH. */
export function findProgram(paths: Paths, name: string): string | undefined {
  for (const dir of searchDirs(paths)) {
    const file = path.join(dir, name);
    try {
      fs.accessSync(file, fs.constants.X_OK);
      return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** findProgram, refusing with the places searched when it is not there. */
export function programPath(paths: Paths, name: string): string {
  const file = findProgram(paths, name);
  if (!file) throw new FsCacheError('environment', `${name} not found in ${searchDirs(paths).join(', ')}`);
  return file;
}
