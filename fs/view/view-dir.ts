/**
 * The view's mount point, R/usr.view, on the persistent root file system. Under the mount
 * it holds one relative link per top-level entry of the real tree (`bin -> ../usr.real/bin`),
 * so that with nothing mounted on it it *is* the real tree: after a power cut (the view's
 * process gone, nothing mounted, /run empty) an R/usr left pointing here still boots.
 *
 * The links can be changed only while nothing is mounted there: at setup, and by the view
 * and the mirror right before they mount. Each is replaced atomically (new name, rename),
 * since R/usr may lead here while it happens, and the directory is synced at the end.
 */
import * as fs from 'fs';
import * as path from 'path';
import { errnoCode, FsCacheError } from '../../core/errors';
import { syncDir } from '../switch/link';
import { isMountPoint } from '../../core/mounts';
import type { Paths } from '../../core/paths';

const PENDING_PREFIX = '.fscache-new.';

export interface ViewDirRefresh {
  added: number;
  replaced: number;
  removed: number;
}

/** The link target under the view's mount point for a top-level entry of the real tree. */
export function underlayTarget(paths: Paths, name: string): string {
  return path.relative(paths.viewMount, path.join(paths.realTree, name));
}

function placeLink(dir: string, name: string, target: string): void {
  const pending = path.join(dir, PENDING_PREFIX + name);
  fs.rmSync(pending, { force: true });
  fs.symlinkSync(target, pending);
  fs.renameSync(pending, path.join(dir, name));
}

/**
 * Creates the view's mount point if needed and makes its links match the real tree's
 * top-level entries: missing ones added, wrong ones replaced, stale ones removed. Refuses
 * (busy) while something is mounted there, and refuses anything in it that is not a link:
 * fscache mounts over nothing it did not put there.
 */
export function refreshViewDir(paths: Paths): ViewDirRefresh {
  const dir = paths.viewMount;
  if (isMountPoint(dir)) throw new FsCacheError('busy', `${dir} is mounted; its links to the real tree are refreshed only while nothing is mounted there`);
  let created = false;
  try {
    fs.mkdirSync(path.dirname(dir), { recursive: true, mode: 0o755 });
    fs.mkdirSync(dir, { mode: 0o755 });
    fs.chmodSync(dir, 0o755); // not the umask's choice
    created = true;
  } catch (err) {
    if (errnoCode(err) !== 'EEXIST') throw err;
  }
  // Trust only root-owned state: after a power cut these links are /usr, so nobody else may
  // be able to place a name here. Checked on the opened directory, which is not a symlink.
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW);
  try {
    const st = fs.fstatSync(fd);
    if (st.uid !== 0 || (st.mode & 0o022) !== 0) {
      throw new FsCacheError('refused', `${dir} must be owned by root and writable by root only (it is uid ${st.uid}, mode ${(st.mode & 0o7777).toString(8)})`);
    }
    const wanted = new Set(fs.readdirSync(paths.realTree));
    const result: ViewDirRefresh = { added: 0, replaced: 0, removed: 0 };
    const present = new Set<string>();
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      if (!entry.isSymbolicLink()) {
        throw new FsCacheError('busy', `mount point ${dir} is not empty: it holds ${entry.name}, which is not one of fscache's links to the real tree; move it away`);
      }
      const file = path.join(dir, entry.name);
      if (entry.name.startsWith(PENDING_PREFIX) || !wanted.has(entry.name)) {
        fs.unlinkSync(file); // an interrupted refresh's, or an entry gone from the real tree
        if (!entry.name.startsWith(PENDING_PREFIX)) result.removed++;
        continue;
      }
      present.add(entry.name);
      if (fs.readlinkSync(file) !== underlayTarget(paths, entry.name)) {
        placeLink(dir, entry.name, underlayTarget(paths, entry.name));
        result.replaced++;
      }
    }
    for (const name of wanted) {
      if (present.has(name) || name.startsWith(PENDING_PREFIX)) continue;
      placeLink(dir, name, underlayTarget(paths, name));
      result.added++;
    }
    fs.fsyncSync(fd);
    if (created) syncDir(path.dirname(dir));
    return result;
  } finally {
    fs.closeSync(fd);
  }
}
