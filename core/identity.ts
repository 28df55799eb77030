/**
 * The identity of a real file: what must be unchanged for a flash copy to be served.
 * Taken from the object actually opened (fstat of a descriptor), with one exception: an
 * open may decide on vouched metadata (fs/view/vouched-meta.ts), an lstat of the name taken
 * earlier while an inotify watch covered its directory (and, for a file with other hard
 * links, its inode), which the watcher forgets at the first change: a name checked
 * earlier, but one that cannot have changed unseen.
 */
import * as fs from 'fs';

export interface RealIdentity {
  dev: bigint;
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
}

export function identityOf(st: fs.BigIntStats): RealIdentity {
  return { dev: st.dev, ino: st.ino, size: st.size, mtimeNs: st.mtimeNs };
}

/**
 * The object a kernel node was looked up as (fuse-nodes.ts): device, inode, file type bits.
 * The view answers ESTALE rather than read another object under that node's name.
 */
export interface ObjectId {
  dev: number;
  ino: number;
  fileType: number;
}

/** Whether `st` (fstat of the object opened) is the object `id`. */
export function isObject(st: fs.BigIntStats, id: ObjectId): boolean {
  return Number(st.dev) === id.dev && Number(st.ino) === id.ino && (Number(st.mode) & 0o170000) === id.fileType;
}

export function sameIdentity(a: RealIdentity, b: RealIdentity): boolean {
  return a.dev === b.dev && a.ino === b.ino && a.size === b.size && a.mtimeNs === b.mtimeNs;
}
