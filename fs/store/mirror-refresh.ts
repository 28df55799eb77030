/**
 * After a package transaction in mirror mode, before R/usr goes back to the mirror: rsync's
 * quick check compares size and mtime only, and a package's files carry the mtime of their
 * build, in whole seconds. An upgraded library of the same size built in the same second would
 * stay old in the mirror. Every file the transaction wrote has a newer ctime (which no package
 * manager can set), so the mirror's copy of each is dropped and rsync copies it afresh.
 */
import * as fs from 'fs';
import * as path from 'path';
import { errnoCode } from '../../core/errors';

/** Regular files under `dir` whose ctime is `sinceMs` or later, relative to `dir`; symlinks are not followed. */
export function filesChangedSince(dir: string, sinceMs: number): string[] {
  const changed: string[] = [];
  const walk = (rel: string) => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(path.join(dir, rel), { withFileTypes: true });
    } catch (err) {
      if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') return; // removed while we walk
      throw err;
    }
    for (const e of entries) {
      const child = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(child);
      else if (e.isFile()) {
        try {
          if (fs.lstatSync(path.join(dir, child)).ctimeMs >= sinceMs) changed.push(child);
        } catch {
          // removed while we walk: rsync --delete takes care of it
        }
      }
    }
  };
  walk('');
  return changed;
}

/**
 * Unlinks the mirror's copy of `rel` if it is a regular file reached through real directories
 * only: a symlink in the mirror where the real tree has a directory must not lead the unlink
 * outside the mirror (rsync replaces such a link anyway).
 */
export function dropMirrorCopy(mirror: string, rel: string): boolean {
  let dir = mirror;
  const parts = rel.split('/');
  try {
    for (const part of parts.slice(0, -1)) {
      dir = path.join(dir, part);
      if (!fs.lstatSync(dir).isDirectory()) return false;
    }
    const file = path.join(dir, parts[parts.length - 1]);
    if (!fs.lstatSync(file).isFile()) return false;
    fs.unlinkSync(file);
    return true;
  } catch (err) {
    if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') return false;
    throw err;
  }
}
