/**
 * The view: a read-only FUSE file system presenting the real tree (R/usr.real).
 *
 * Promises:
 * - Metadata, names and link targets come from the real tree: read from it, or
 *   answered from memory for a path whose directory was under an inotify watch before
 *   it was read, until any change in that directory or metadata_trust_seconds
 *   (VouchedMeta). On a cold launch from a slow disk that saves a disk read per name.
 * - Never stale, never torn: at every open the flash copy is served only if it was
 *   made from a file of exactly the real file's current identity (dev, inode, size,
 *   mtime in ns) — taken from fstat of the real file opened now, or from vouched
 *   metadata; otherwise the real file is served and a background copy is started. The kernel keeps pages across opens only while mtime
 *   and size are unchanged (auto_cache), and attributes for attr_timeout seconds.
 * - Fail open: every handler answers with an errno on failure; a fill or index error
 *   falls back to the real file.
 * - The view never touches its own mount: every path below is under the real tree.
 */
import * as fs from 'fs';
import * as path from 'path';
import { errnoCode } from './errors';
import { identityOf } from './identity';
import type { Logger } from './log';
import { Attr, Errno, FsStats, Handle, ViewHandlers } from './session';
import type { Store } from './store';
import type { VouchedMeta } from './vouched-meta';
import type { Watcher } from './watcher';
import { readXattrs } from './xattr';

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
  /** Metadata answers (lookups, listings, link targets) read from the real tree, and from vouched memory. */
  metaFromReal: number;
  metaFromMemory: number;
}

function toAttr(st: fs.BigIntStats): Attr {
  const date = (ns: bigint) => new Date(Number(ns / 1000000n));
  return {
    mode: Number(st.mode), uid: Number(st.uid), gid: Number(st.gid), size: Number(st.size), dev: Number(st.dev),
    ino: Number(st.ino), nlink: Number(st.nlink), rdev: Number(st.rdev), blksize: Number(st.blksize),
    blocks: Number(st.blocks), atime: date(st.atimeNs), mtime: date(st.mtimeNs), ctime: date(st.ctimeNs),
  };
}

export class View implements ViewHandlers {
  readonly counters: ViewCounters = { opens: 0, hits: 0, misses: 0, bytesFromStore: 0, bytesFromReal: 0, metaFromReal: 0, metaFromMemory: 0 };
  private readonly open_ = new Map<Handle, OpenFile>();
  private nextHandle = 1;

  constructor(
    private readonly realTree: string,
    private readonly store: Store | undefined,
    private readonly log: Logger,
    private readonly watcher?: Watcher,
    private readonly meta?: VouchedMeta,
  ) {}

  /** Whether what is read now about entries of `dir` may be kept: its watch is live first. */
  private vouches(dir: string): boolean {
    return !!this.meta?.enabled && !!this.watcher?.watchDir(dir);
  }

  /**
   * The kernel session may let the kernel keep an answer about `p` as long as vouched
   * memory would: its directory is under watch, so a change is reported and invalidated.
   * Called right after the answer was read, so the watch was live before the read.
   */
  vouchedSeconds(p: string): number {
    if (!this.meta?.enabled || !this.watcher || p === '/') return 0;
    return this.watcher.isWatched(path.dirname(this.real(p))) ? Math.floor(this.meta.trustMs / 1000) : 0;
  }

  private lstat(real: string): fs.BigIntStats {
    const known = this.meta?.attr(real);
    if (known !== undefined) this.counters.metaFromMemory++;
    if (known === null) throw new Errno('ENOENT');
    if (known) return known;
    this.counters.metaFromReal++;
    const vouched = this.vouches(path.dirname(real));
    try {
      const st = fs.lstatSync(real, { bigint: true });
      if (vouched) this.meta!.recordAttr(real, st);
      return st;
    } catch (err) {
      if (vouched && errnoCode(err) === 'ENOENT') this.meta!.recordAttr(real, null);
      throw err;
    }
  }

  /** The real path for a view path; the kernel sends normalized absolute paths. */
  private real(p: string): string {
    return p === '/' ? this.realTree : this.realTree + p;
  }

  // Metadata calls are synchronous: on a warm tree each is a few microseconds, less
  // than a hop through libuv's thread pool, and warm launches are made of them.
  async getattr(p: string): Promise<Attr> {
    const st = this.lstat(this.real(p));
    // A session without OPEN (kernel) sees a warm launch only as lookups: count them as use,
    // so that eviction keeps what is used (batched; a path without a copy is a no-op).
    if (this.store && st.isFile()) this.store.index.recordAccess(p.slice(1), false);
    return toAttr(st);
  }

  async readdir(p: string): Promise<string[]> {
    const real = this.real(p);
    return this.recall(this.meta?.listing(real), real, () => fs.readdirSync(real), (names) => this.meta!.recordListing(real, names));
  }

  async readlink(p: string): Promise<string> {
    const real = this.real(p);
    return this.recall(this.meta?.link(real), path.dirname(real), () => fs.readlinkSync(real), (target) => this.meta!.recordLink(real, target));
  }

  /**
   * What vouched memory holds (`known`), or what `read` finds in the real tree, kept
   * when `dir` (the directory whose entries it describes) was under watch before the read.
   */
  private async recall<T>(known: T | undefined, dir: string, read: () => T | Promise<T>, record: (value: T) => void): Promise<T> {
    if (known !== undefined) {
      this.counters.metaFromMemory++;
      return known;
    }
    this.counters.metaFromReal++;
    const vouched = this.vouches(dir);
    const value = await read();
    if (vouched) record(value);
    return value;
  }

  async open(p: string, flags: number): Promise<Handle> {
    if (flags & WRITE_FLAGS) throw new Errno('EROFS');
    const relPath = p.slice(1);
    const vouched = this.store ? this.meta?.attr(this.real(p)) : undefined;
    if (vouched?.isFile()) {
      // The watcher vouches for this identity: the copy can be served without touching the real tree.
      const copyFd = this.store!.openCopy(relPath, identityOf(vouched));
      if (copyFd !== undefined) return this.opened({ fd: copyFd, relPath, fromStore: true });
    }
    const realFd = fs.openSync(this.real(p), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    let file: OpenFile = { fd: realFd, relPath, fromStore: false };
    try {
      if (this.store) file = this.chooseSource(realFd, relPath);
    } catch (err) {
      this.log.warn(`store lookup for ${relPath} failed (${err}); serving the real file`);
    }
    if (file.fd !== realFd) fs.closeSync(realFd);
    return this.opened(file);
  }

  private opened(file: OpenFile): Handle {
    const { relPath } = file;
    const handle = this.nextHandle++;
    this.open_.set(handle, file);
    this.counters.opens++;
    if (file.fromStore) {
      this.counters.hits++;
      this.store!.index.recordAccess(relPath, true);
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
    if (copyFd !== undefined) return { fd: copyFd, relPath, fromStore: true };
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
    return (await this.xattrList(p)).get(name);
  }

  async listxattr(p: string): Promise<string[]> {
    return [...(await this.xattrList(p)).keys()];
  }

  /** A file's xattrs; from vouched memory when the watcher vouches (setting one is an IN_ATTRIB event). */
  private xattrList(p: string): Promise<Map<string, Buffer>> {
    const real = this.real(p);
    return this.recall(this.meta?.xattrs(real), path.dirname(real), () => readXattrs(real), (attrs) => this.meta!.recordXattrs(real, attrs));
  }

  openHandles(): number {
    return this.open_.size;
  }
}

