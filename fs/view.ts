/**
 * The view: a read-only FUSE file system presenting the real tree (R/usr.real).
 *
 * Promises:
 * - Metadata, names and link targets always come from the real tree.
 * - Never stale, never torn: at every open the real file is opened and fstat'ed, and
 *   its flash copy is served only if the copy was made from a file of exactly that
 *   identity (dev, inode, size, mtime); otherwise the real file is served and a
 *   background copy is started. The kernel keeps pages across opens only while mtime
 *   and size are unchanged (auto_cache), and attributes for attr_timeout seconds.
 * - Fail open: every handler answers with an errno on failure; a fill or index error
 *   falls back to the real file.
 * - The view never touches its own mount: every path below is under the real tree.
 */
import * as fs from 'fs';
import { identityOf } from './identity';
import type { Logger } from './log';
import { Attr, Errno, FsStats, Handle, ViewHandlers } from './session';
import type { Store } from './store';
import { XattrReader } from './xattr';

const WRITE_FLAGS = fs.constants.O_WRONLY | fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_TRUNC | fs.constants.O_APPEND;

interface OpenFile {
  fd: number;
  relPath: string;
  fromStore: boolean;
}

export interface ViewCounters {
  opens: number;
  /** Opens served from a flash copy. */
  hits: number;
  /** Opens served from the real tree. */
  misses: number;
  bytesFromStore: number;
  bytesFromReal: number;
}

function toAttr(st: fs.Stats): Attr {
  return {
    mode: st.mode, uid: st.uid, gid: st.gid, size: st.size, dev: st.dev, ino: st.ino, nlink: st.nlink,
    rdev: st.rdev, blksize: st.blksize, blocks: st.blocks, atime: st.atime, mtime: st.mtime, ctime: st.ctime,
  };
}

export class View implements ViewHandlers {
  readonly counters: ViewCounters = { opens: 0, hits: 0, misses: 0, bytesFromStore: 0, bytesFromReal: 0 };
  private readonly open_ = new Map<Handle, OpenFile>();
  private nextHandle = 1;
  private readonly xattrs = new XattrReader();

  constructor(
    private readonly realTree: string,
    private readonly store: Store | undefined,
    private readonly log: Logger,
  ) {}

  /** The real path for a view path; the kernel sends normalized absolute paths. */
  private real(p: string): string {
    return p === '/' ? this.realTree : this.realTree + p;
  }

  // Metadata calls are synchronous: on a warm tree each is a few microseconds, less
  // than a hop through libuv's thread pool, and warm launches are made of them.
  async getattr(p: string): Promise<Attr> {
    return toAttr(fs.lstatSync(this.real(p)));
  }

  async readdir(p: string): Promise<string[]> {
    return fs.readdirSync(this.real(p));
  }

  async readlink(p: string): Promise<string> {
    return fs.readlinkSync(this.real(p));
  }

  async open(p: string, flags: number): Promise<Handle> {
    if (flags & WRITE_FLAGS) throw new Errno('EROFS');
    const relPath = p.slice(1);
    const realFd = fs.openSync(this.real(p), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    let file: OpenFile = { fd: realFd, relPath, fromStore: false };
    try {
      if (this.store) file = this.chooseSource(realFd, relPath);
    } catch (err) {
      this.log.warn(`store lookup for ${relPath} failed (${err}); serving the real file`);
    }
    if (file.fd !== realFd) fs.closeSync(realFd);
    const handle = this.nextHandle++;
    this.open_.set(handle, file);
    this.counters.opens++;
    if (file.fromStore) {
      this.counters.hits++;
      this.store!.inUse.set(relPath, (this.store!.inUse.get(relPath) ?? 0) + 1);
    } else {
      this.counters.misses++;
    }
    return handle;
  }

  /** Decides on the object actually opened: the identity comes from fstat of realFd. */
  private chooseSource(realFd: number, relPath: string): OpenFile {
    const st = fs.fstatSync(realFd, { bigint: true });
    if (!st.isFile()) return { fd: realFd, relPath, fromStore: false };
    const identity = identityOf(st);
    const copyFd = this.store!.openCopy(relPath, identity);
    if (copyFd !== undefined) {
      this.store!.index.recordAccess(relPath, true);
      return { fd: copyFd, relPath, fromStore: true };
    }
    if (this.store!.wants(relPath, identity.size)) void this.store!.fill(relPath);
    return { fd: realFd, relPath, fromStore: false };
  }

  read(handle: Handle, into: Buffer, length: number, position: number): Promise<number> {
    const file = this.open_.get(handle);
    if (!file) return Promise.reject(new Errno('EBADF'));
    return new Promise((resolve, reject) =>
      fs.read(file.fd, into, 0, length, position, (err, n) => {
        if (err) return reject(err);
        if (file.fromStore) this.counters.bytesFromStore += n;
        else this.counters.bytesFromReal += n;
        resolve(n);
      }),
    );
  }

  async release(handle: Handle): Promise<void> {
    const file = this.open_.get(handle);
    if (!file) return;
    this.open_.delete(handle);
    if (file.fromStore && this.store) {
      const n = (this.store.inUse.get(file.relPath) ?? 1) - 1;
      if (n > 0) this.store.inUse.set(file.relPath, n);
      else this.store.inUse.delete(file.relPath);
    }
    fs.closeSync(file.fd);
  }

  async statfs(): Promise<FsStats> {
    const s = await fs.promises.statfs(this.realTree);
    return {
      bsize: s.bsize, frsize: s.bsize, blocks: s.blocks, bfree: s.bfree, bavail: s.bavail,
      files: s.files, ffree: s.ffree, favail: s.ffree, fsid: 0, flag: 1 /* ST_RDONLY */, namemax: 255,
    };
  }

  async access(p: string, mode: number): Promise<void> {
    if (mode & fs.constants.W_OK) throw new Errno('EROFS');
    await fs.promises.access(this.real(p), mode);
  }

  async getxattr(p: string, name: string): Promise<Buffer | undefined> {
    return (await this.xattrs.list(this.real(p))).get(name);
  }

  async listxattr(p: string): Promise<string[]> {
    return [...(await this.xattrs.list(this.real(p))).keys()];
  }

  openHandles(): number {
    return this.open_.size;
  }
}

