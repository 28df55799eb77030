/**
 * The real tree as the view and the store's fill reach it: every name is resolved beneath
 * one O_PATH descriptor of the tree's root, with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS),
 * and every answer is read from the descriptor so opened (fstat, readlinkat, xattrs of
 * /proc/self/fd/N), never from the name again.
 *
 * Why: fscache runs as root, and a name resolved from / is only as safe as every directory
 * on its way. A user who can write one directory of the tree could replace it by a symlink
 * to any host path while holding a directory below it through the view, and the view read
 * files there that the user cannot (issue 14, finding 2). O_NOFOLLOW covers only the last
 * component; RESOLVE_NO_SYMLINKS covers every one.
 *
 * - The kernel resolves every symlink it meets in the view itself (READLINK, then LOOKUPs
 *   from the link's directory), so a path the view is asked about never crosses a symlink of
 *   the tree. One that does names a tree changed since the lookup: ESTALE (see resolve()).
 * - Where the caller knows the object a path was looked up as (the kernel session's nodes), the
 *   object opened must be it, or the one whose entry is looked up must be the node's directory:
 *   else ESTALE. A directory renamed over another within the tree (no symlink involved) never
 *   lets a held node read the object now under its old name.
 * - Paths longer than PATH_MAX (a deep tree reached by `cd` one step at a time, which works
 *   natively) are resolved in pieces, each beneath the previous piece's O_PATH descriptor.
 * - Descriptors are opened O_CLOEXEC (by the addon) and, for anything but O_PATH, O_NONBLOCK:
 *   a FIFO swapped in for a file never blocks the view's main thread in open().
 * Requires Linux >= 5.6 (openat2); an older kernel fails at the first call with ENOSYS.
 */
import * as fs from 'fs';
import { isObject, ObjectId } from '../../core/identity';
import { Errno } from '../fuse/session';
import { native } from '../../core/native';
import { readXattrs } from './xattr';

const { O_PATH, O_DIRECTORY, O_NOFOLLOW, RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS, AT_FDCWD } = native.constants;
/** Never above the tree's root, never through a symlink, on any component. */
const RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS;
/** The longest path given to one openat2: PATH_MAX (4096) counts the terminating NUL. */
const PIECE_BYTES = 4000;
/** openat2 may answer EAGAIN when a rename races a RESOLVE_BENEATH walk: tried again, a few times. */
const TRIES = 4;

/** What the object opened must be: `self` the object itself, `parent` the directory holding its entry. */
export interface Expected {
  self?: ObjectId;
  parent?: ObjectId;
}

export class RealTree {
  /** O_PATH descriptor of the root, held for the life of the process. */
  private readonly rootFd: number;

  /** `root`: the real tree's absolute path, named by root-owned configuration; the only name resolved from /. */
  constructor(readonly root: string) {
    this.rootFd = native.openat2(AT_FDCWD, root, O_PATH | O_DIRECTORY, 0);
  }

  /**
   * A descriptor for view path `p` (absolute, normalized; '/' is the root) opened with
   * `flags`; the caller closes it. A final symlink is returned itself only with O_PATH | O_NOFOLLOW.
   * ESTALE when it, or its directory, is not the object `want` names.
   */
  open(p: string, flags: number, want: Expected = {}): number {
    if ((flags & O_PATH) === 0) flags |= fs.constants.O_NONBLOCK;
    let fd: number;
    if (want.parent) {
      // The entry is looked up in the very directory the caller holds, not in whatever its name names now.
      const slash = p.lastIndexOf('/');
      const dirfd = this.resolve(p.slice(0, slash) || '/', O_PATH | O_DIRECTORY);
      try {
        this.check(dirfd, want.parent);
        fd = this.openat(dirfd, p.slice(slash + 1), flags);
      } finally {
        fs.closeSync(dirfd);
      }
    } else {
      fd = this.resolve(p, flags);
    }
    if (want.self) {
      try {
        this.check(fd, want.self);
      } catch (err) {
        fs.closeSync(fd);
        throw err;
      }
    }
    return fd;
  }

  /** Decides on the object opened: another one than the caller looked up is ESTALE. */
  private check(fd: number, id: ObjectId): void {
    if (!isObject(fs.fstatSync(fd, { bigint: true }), id)) throw new Errno('ESTALE');
  }

  private resolve(p: string, flags: number): number {
    const names = p.split('/').filter((n) => n !== '');
    if (names.length === 0) return this.openat(this.rootFd, '.', flags);
    let dirfd = this.rootFd;
    try {
      for (let start = 0; ;) {
        let end = start;
        let bytes = 0;
        while (end < names.length && (end === start || bytes + 1 + Buffer.byteLength(names[end]) <= PIECE_BYTES)) bytes += 1 + Buffer.byteLength(names[end++]);
        const piece = names.slice(start, end).join('/');
        if (end === names.length) return this.openat(dirfd, piece, flags);
        // Each piece beneath the previous one's descriptor: the same rules hold across the cut.
        const next = this.openat(dirfd, piece, O_PATH | O_DIRECTORY);
        if (dirfd !== this.rootFd) fs.closeSync(dirfd);
        dirfd = next;
        start = end;
      }
    } finally {
      if (dirfd !== this.rootFd) fs.closeSync(dirfd);
    }
  }

  private openat(dirfd: number, piece: string, flags: number): number {
    for (let i = 1; ; i++) {
      try {
        return native.openat2(dirfd, piece, flags, RESOLVE);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN' && i < TRIES) continue;
        // A symlink on the way (or a final one opened for reading): the tree changed since the kernel
        // looked this path up, as it follows every link itself. Never followed; the name is stale.
        if (code === 'ELOOP') throw new Errno('ESTALE');
        // Only '..' could leave the tree, and the kernel never sends one; refused all the same.
        if (code === 'EXDEV') throw new Errno('EACCES');
        throw err;
      }
    }
  }

  /** Calls `use` with an O_PATH descriptor of `p` itself (a final symlink not followed), closed after. */
  private withPath<T>(p: string, want: Expected, use: (fd: number) => T): T {
    const fd = this.open(p, O_PATH | O_NOFOLLOW, want);
    try {
      return use(fd);
    } finally {
      fs.closeSync(fd);
    }
  }

  lstat(p: string, want: Expected = {}): fs.BigIntStats {
    return this.withPath(p, want, (fd) => fs.fstatSync(fd, { bigint: true }));
  }

  readlink(p: string, want: Expected = {}): string {
    return this.withPath(p, want, (fd) => {
      try {
        return native.readlinkat(fd, '');
      } catch (err) {
        // readlinkat(fd, "") of an object that is no symlink says ENOENT; readlink(2) by name says EINVAL.
        if ((err as NodeJS.ErrnoException).code === 'ENOENT' && !fs.fstatSync(fd).isSymbolicLink()) throw new Errno('EINVAL');
        throw err;
      }
    });
  }

  /** The names in directory `p`, read through the magic link of its descriptor (resolved to that object, never by name). */
  readdir(p: string, want: Expected = {}): string[] {
    return this.withPath(p, want, (fd) => {
      if (!fs.fstatSync(fd).isDirectory()) throw new Errno('ENOTDIR');
      return fs.readdirSync(`/proc/self/fd/${fd}`);
    });
  }

  xattrs(p: string, want: Expected = {}): Map<string, Buffer> {
    return this.withPath(p, want, (fd) => readXattrs(fd));
  }

  access(p: string, mode: number, want: Expected = {}): void {
    this.withPath(p, want, (fd) => fs.accessSync(`/proc/self/fd/${fd}`, mode));
  }

  statfs(): Promise<fs.StatsFs> {
    return fs.promises.statfs(`/proc/self/fd/${this.rootFd}`);
  }
}

/** One RealTree per root and process: the view and the store's fill share its descriptor. */
const trees = new Map<string, RealTree>();

export function realTreeAt(root: string): RealTree {
  let tree = trees.get(root);
  if (!tree) trees.set(root, (tree = new RealTree(root)));
  return tree;
}

/**
 * The real file `relPath` as a FileHandle for asynchronous reads (the store's fill): opened
 * beneath the root, then reopened through its descriptor's magic link, which the kernel
 * resolves to exactly the object opened (not by name).
 */
export async function openRealFile(root: string, relPath: string): Promise<fs.promises.FileHandle> {
  const fd = realTreeAt(root).open('/' + relPath, fs.constants.O_RDONLY | O_NOFOLLOW);
  try {
    return await fs.promises.open(`/proc/self/fd/${fd}`, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } finally {
    fs.closeSync(fd);
  }
}
