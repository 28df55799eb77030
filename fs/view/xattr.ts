/**
 * Extended attributes (file capabilities, ACLs, SELinux labels) of an object of the real
 * tree open as a descriptor (fs/view/real-tree.ts), read in this process through fscache's addon. Never by running getfattr: a program is found and
 * loaded through PATH, i.e. through /usr, which may be the view itself, and a view that
 * waits for itself deadlocks every launch (issue 13). A read costs about 2 µs, less than the
 * lstat a cache would need to check itself, so nothing is kept here; the view's vouched
 * memory keeps what the watcher vouches for.
 */
import { errnoCode } from '../../core/errors';
import { native } from '../../core/native';

/** Every extended attribute by name of the object `fd` is open on (O_PATH suffices; a symlink's own). */
export function readXattrs(fd: number): Map<string, Buffer> {
  let names: string[];
  try {
    names = native.flistxattr(fd);
  } catch (err) {
    // A file system without xattrs has none to show. Answering the kernel EOPNOTSUPP instead
    // would make it stop asking for the whole mount (file capabilities lost everywhere).
    if (errnoCode(err) === 'EOPNOTSUPP') return new Map();
    throw err;
  }
  const attrs = new Map<string, Buffer>();
  for (const name of names) {
    const value = native.fgetxattr(fd, name);
    // undefined: removed between the list and the read.
    if (value !== undefined) attrs.set(name, value);
  }
  return attrs;
}
