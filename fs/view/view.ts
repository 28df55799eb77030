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
 *   mtime in ns, and ctime, which nobody can set back) — taken from fstat of the real file opened now, or from vouched
 *   metadata; otherwise the real file is served and a background copy is started. The kernel keeps pages across opens only while mtime
 *   and size are unchanged (auto_cache), and attributes for attr_timeout seconds.
 * - A copy's bytes are hashed the first time this process serves it (Store.checkCopy),
 *   before the first read of it is answered: a copy that rotted on flash is dropped and
 *   that read, and every later one, comes from the real file.
 * - A node keeps the bytes it was looked up as: open() with `expect` (the kernel session's
 *   nodes) serves only that object, from the real file if the name still names it (same
 *   device and inode), else from a flash copy of exactly that version, else EIO; never
 *   another file's bytes under an old node.
 * - Fail open: every handler answers with an errno on failure; a fill, index or flash
 *   error falls back to the real file (a failed read of a copy is retried from the real
 *   file when that is still the copy's version).
 * - The view never touches its own mount: every path below is under the real tree.
 * - Nothing can redirect it out of the real tree: every name is resolved beneath a
 *   descriptor of its root, through no symlink (fs/view/real-tree.ts), and every answer is read
 *   from the object so opened.
 * - A library with a randomized image in the current epoch is answered as that image
 *   (loader-hook/served-images.ts): its size, times, device and inode, the real file's mode
 *   and owner. A node answered as an image reads only that image.
 */
import * as fs from 'fs';
import * as path from 'path';
import { errnoCode } from '../../core/errors';
import { identityOf, ObjectId, RealIdentity, sameIdentity } from '../../core/identity';
import type { ServedImages } from '../../loader-hook/served-images';
import type { Logger } from '../../core/log';
import { RealTree, realTreeAt } from './real-tree';
import { Attr, Errno, FsStats, Handle, ViewHandlers } from '../fuse/session';
import type { Store } from '../store/store';
import type { VouchedMeta } from './vouched-meta';
import type { Watcher } from './watcher';

const S_IFMT = 0o170000;
const WRITE_FLAGS = fs.constants.O_WRONLY | fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_TRUNC | fs.constants.O_APPEND;

interface OpenFile {
  fd: number;
  relPath: string;
  fromStore: boolean;
  /** The version a copy was made from (a failed copy read falls back to the real file only if it still is that). */
  identity?: RealIdentity;
  /** A randomized image served under the library's name (immutable: never a stale copy). */
  image?: boolean;
  /** Reads in flight: a descriptor replaced meanwhile is closed when they are done. */
  inflight: number;
  /** Copy descriptors replaced by the real file, waiting for the reads in flight. */
  retired?: number[];
  /** The check of the copy's bytes at its first serve in this process, awaited by the first read. */
  check?: Promise<boolean>;
  /** The copy failed that check and the real file is another version now: EIO. */
  unservable?: boolean;
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
  /** Opens served a randomized image under the library's name. */
  images: number;
}

function toAttr(st: fs.BigIntStats): Attr {
  const date = (ns: bigint) => new Date(Number(ns / 1000000n));
  return {
    mode: Number(st.mode), uid: Number(st.uid), gid: Number(st.gid), size: Number(st.size), dev: Number(st.dev),
    ino: Number(st.ino), nlink: Number(st.nlink), rdev: Number(st.rdev), blksize: Number(st.blksize),
    blocks: Number(st.blocks), atime: date(st.atimeNs), mtime: date(st.mtimeNs), ctime: date(st.ctimeNs), mtimeNs: st.mtimeNs,
  };
}

export class View implements ViewHandlers {
  readonly counters: ViewCounters = { opens: 0, hits: 0, misses: 0, bytesFromStore: 0, bytesFromReal: 0, metaFromReal: 0, metaFromMemory: 0, images: 0 };
  /**
   * For a session whose nodes are paths (libfuse2): what each path was first answered as (its
   * real file's identity key, and the image or null for the original), kept until the view is
   * renewed, since the kernel would drop the pages of mapped files whose size or mtime changes.
   */
  private readonly pinned?: Map<string, { key: string; image: fs.BigIntStats | null }>;
  private readonly open_ = new Map<Handle, OpenFile>();
  private nextHandle = 1;
  private readonly tree: RealTree;

  constructor(
    private readonly realTree: string,
    private readonly store: Store | undefined,
    private readonly log: Logger,
    private readonly watcher?: Watcher,
    private readonly meta?: VouchedMeta,
    private readonly images?: ServedImages,
    pinImages = false,
  ) {
    this.tree = realTreeAt(realTree);
    if (pinImages) this.pinned = new Map();
    if (store) store.onDropped = (relPath) => this.copyDropped(relPath);
  }

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

  /**
   * `p`'s attributes; `real` (its real path) only keys vouched memory, the tree is never asked by it.
   * Memory holds only what was read from the tree, and the watcher drops it when a directory on the way changes.
   */
  private lstat(p: string, real: string, parent?: ObjectId): fs.BigIntStats {
    const known = this.meta?.attr(real);
    if (known !== undefined) this.counters.metaFromMemory++;
    if (known === null) throw new Errno('ENOENT');
    if (known) return known;
    this.counters.metaFromReal++;
    const vouched = this.vouches(path.dirname(real));
    try {
      const st = this.tree.lstat(p, { parent });
      if (vouched) this.meta!.recordAttr(real, st);
      return st;
    } catch (err) {
      if (vouched && errnoCode(err) === 'ENOENT') this.meta!.recordAttr(real, null);
      throw err;
    }
  }

  /**
   * The real path for a view path (the kernel sends normalized absolute paths): a key for
   * vouched memory and the watcher, never opened by this name (this.tree resolves it).
   */
  private real(p: string): string {
    return p === '/' ? this.realTree : this.realTree + p;
  }

  // Metadata calls are synchronous: on a warm tree each is a few microseconds, less
  // than a hop through libuv's thread pool, and warm launches are made of them.
  async getattr(p: string, parent?: ObjectId): Promise<Attr> {
    const st = this.lstat(p, this.real(p), parent);
    // A session without OPEN (kernel) sees a warm launch only as lookups: count them as use,
    // so that eviction keeps what is used (batched; a path without a copy is a no-op).
    if (this.store && st.isFile()) this.store.recordAccess(p.slice(1), false);
    const image = this.servedImage(p, st);
    return image ? servedAttr(st, image) : toAttr(st);
  }

  /** The image to answer the real file `st` at `p` as, if any (pinned per path for path sessions). */
  private servedImage(p: string, st: fs.BigIntStats): fs.BigIntStats | undefined {
    if (!this.images || !st.isFile()) return undefined;
    if (!this.pinned) return this.images.imageFor(p, st);
    const key = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}`;
    const pin = this.pinned.get(p);
    if (pin?.key === key) return pin.image ?? undefined;
    const image = this.images.imageFor(p, st);
    this.pinned.set(p, { key, image: image ?? null });
    return image;
  }

  async readdir(p: string, held?: ObjectId): Promise<string[]> {
    const real = this.real(p);
    return this.recall(this.meta?.listing(real), real, () => this.tree.readdir(p, { self: held }), (names) => this.meta!.recordListing(real, names));
  }

  async readlink(p: string, held?: ObjectId): Promise<string> {
    const real = this.real(p);
    return this.recall(this.meta?.link(real), path.dirname(real), () => this.tree.readlink(p, { self: held }), (target) => this.meta!.recordLink(real, target));
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

  async open(p: string, flags: number, expect?: Attr): Promise<Handle> {
    if (flags & WRITE_FLAGS) throw new Errno('EROFS');
    const relPath = p.slice(1);
    // A node answered as an image reads that image, whatever the name names now.
    if (expect && this.images?.imageOf(expect.dev, expect.ino)) return this.openImage(relPath, expect.dev, expect.ino);
    const vouched = this.store || this.images ? this.meta?.attr(this.real(p)) : undefined;
    // Without a node to go by (libfuse2), a path answered as an image opens that image: never a copy of the original.
    const vouchedImage = !expect && vouched?.isFile() ? this.servedImage(p, vouched) : undefined;
    if (vouchedImage) return this.openImage(relPath, vouchedImage.dev, vouchedImage.ino);
    if (this.store && vouched?.isFile() && (!expect || sameObject(vouched, expect))) {
      // The watcher vouches for this identity: the copy can be served without touching the real tree.
      const copyFd = this.store!.openCopy(relPath, identityOf(vouched), vouched.ctimeNs);
      if (copyFd !== undefined) return this.opened({ fd: copyFd, relPath, fromStore: true, identity: identityOf(vouched), inflight: 0 });
    }
    let realFd: number | undefined;
    try {
      realFd = this.tree.open(p, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    } catch (err) {
      if (!expect) throw err;
    }
    let st = realFd === undefined ? undefined : fs.fstatSync(realFd, { bigint: true });
    if (expect && st && !sameObject(st, expect)) {
      fs.closeSync(realFd!);
      realFd = st = undefined;
    }
    if (realFd === undefined || !st) return this.openReplaced(relPath, expect!);
    const image = expect ? undefined : this.servedImage(p, st);
    if (image) {
      fs.closeSync(realFd);
      return this.openImage(relPath, image.dev, image.ino);
    }
    let file: OpenFile = { fd: realFd, relPath, fromStore: false, inflight: 0 };
    try {
      if (this.store) file = this.chooseSource(realFd, st, relPath);
    } catch (err) {
      this.log.warn(`store lookup for ${relPath} failed (${err}); serving the real file`);
    }
    if (file.fd !== realFd) fs.closeSync(realFd);
    return this.opened(file);
  }

  /**
   * The name no longer names the object the kernel's node was made for (replaced by
   * rename, or removed): only a flash copy of exactly that version has its bytes.
   * Anything else would put another file's bytes under pages the kernel already holds.
   */
  private openReplaced(relPath: string, expect: Attr): Handle {
    const identity = identityOfAttr(expect);
    const copyFd = this.store?.openCopy(relPath, identity);
    if (copyFd !== undefined) return this.opened({ fd: copyFd, relPath, fromStore: true, identity, inflight: 0 });
    this.log.info(`/${relPath} was replaced and no copy of the version still in use is left: EIO for that version`);
    throw new Errno('EIO');
  }

  /** The image answered for a node: EIO when it is gone (its epoch removed while the node lived). */
  private openImage(relPath: string, dev: number | bigint, ino: number | bigint): Handle {
    const fd = this.images!.open(dev, ino);
    if (fd === undefined) {
      this.log.info(`/${relPath}: the randomized image its node was answered as is gone: EIO for that node`);
      throw new Errno('EIO');
    }
    this.counters.images++;
    return this.opened({ fd, relPath, fromStore: false, image: true, inflight: 0 });
  }

  readsCopy(handle: Handle): boolean {
    return this.open_.get(handle)?.fromStore ?? false;
  }

  private opened(file: OpenFile): Handle {
    const { relPath } = file;
    const handle = this.nextHandle++;
    this.open_.set(handle, file);
    this.counters.opens++;
    if (file.fromStore) {
      // In the same tick as openCopy(): the row checked is the one the copy was opened for.
      file.check = this.store!.checkCopy(relPath, file.fd);
      this.counters.hits++;
      this.store!.recordAccess(relPath, true);
      this.store!.inUse.set(relPath, (this.store!.inUse.get(relPath) ?? 0) + 1);
    } else if (!file.image) {
      this.counters.misses++;
    }
    return handle;
  }

  /** Decides on the object actually opened: the identity comes from fstat of realFd. */
  private chooseSource(realFd: number, st: fs.BigIntStats, relPath: string): OpenFile {
    if (!st.isFile()) return { fd: realFd, relPath, fromStore: false, inflight: 0 };
    const identity = identityOf(st);
    const copyFd = this.store!.openCopy(relPath, identity, st.ctimeNs);
    if (copyFd !== undefined) return { fd: copyFd, relPath, fromStore: true, identity, inflight: 0 };
    if (this.store!.wants(relPath, identity.size)) void this.store!.fill(relPath);
    return { fd: realFd, relPath, fromStore: false, inflight: 0 };
  }

  async read(handle: Handle, into: Buffer, length: number, position: number): Promise<number> {
    const file = this.open_.get(handle);
    if (!file) throw new Errno('EBADF');
    if (file.check) await this.checked(file);
    if (file.unservable) throw new Errno('EIO');
    const fd = file.fd;
    let n: number;
    file.inflight++;
    try {
      n = await readAt(fd, into, length, position);
    } catch (err) {
      // Fail open: a flash copy that cannot be read (card pulled, I/O error) is replaced
      // by the real file, if that still is the version the copy was made from.
      if (file.fd === fd && !(file.fromStore && this.toRealFile(file, `unreadable (${errnoCode(err) ?? err})`))) throw err;
      n = await readAt(file.fd, into, length, position);
    } finally {
      if (--file.inflight === 0) this.closeRetired(file);
    }
    if (file.fromStore) this.counters.bytesFromStore += n;
    else this.counters.bytesFromReal += n;
    return n;
  }

  /**
   * Waits for the check of the copy `file` reads; a copy that failed it (dropped by the store,
   * which moves handles to the real file where that is the same version) is never read again.
   */
  private async checked(file: OpenFile): Promise<void> {
    const good = await file.check;
    file.check = undefined;
    if (good || !file.fromStore) return;
    if (!this.toRealFile(file, 'failed its check')) file.unservable = true;
  }

  /** Switches `file` from its copy to the real file when that has the copy's identity. */
  private toRealFile(file: OpenFile, trouble?: string): boolean {
    let fd: number | undefined;
    try {
      fd = this.tree.open('/' + file.relPath, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
      if (!file.identity || !sameIdentity(identityOf(fs.fstatSync(fd, { bigint: true })), file.identity)) {
        fs.closeSync(fd);
        return false;
      }
    } catch {
      if (fd !== undefined) fs.closeSync(fd);
      return false;
    }
    if (trouble) this.log.warn(`flash copy of ${file.relPath} ${trouble}; serving the real file`);
    this.releaseCopy(file);
    // Closed when no read is in flight: a reused descriptor number would read another file.
    (file.retired ??= []).push(file.fd);
    file.fd = fd;
    file.fromStore = false;
    if (file.inflight === 0) this.closeRetired(file);
    return true;
  }

  private closeRetired(file: OpenFile): void {
    for (const fd of file.retired ?? []) fs.close(fd, () => undefined);
    file.retired = undefined;
  }

  /**
   * A copy was removed from the store while handles still read it (kernel nodes hold
   * theirs until the kernel forgets them): those whose real file is still that version
   * move to it, so the copy's flash space is freed now. The others keep the copy: it is
   * the only source left of the bytes their processes mapped.
   */
  private copyDropped(relPath: string): void {
    if (!this.store?.inUse.has(relPath)) return;
    for (const file of this.open_.values()) if (file.fromStore && file.relPath === relPath) this.toRealFile(file);
  }

  private releaseCopy(file: OpenFile): void {
    if (!file.fromStore || !this.store) return;
    const n = (this.store.inUse.get(file.relPath) ?? 1) - 1;
    if (n > 0) this.store.inUse.set(file.relPath, n);
    else this.store.inUse.delete(file.relPath);
  }

  async release(handle: Handle): Promise<void> {
    const file = this.open_.get(handle);
    if (!file) return;
    this.open_.delete(handle);
    this.releaseCopy(file);
    fs.closeSync(file.fd);
    this.closeRetired(file);
  }

  async statfs(): Promise<FsStats> {
    const s = await this.tree.statfs();
    return {
      bsize: s.bsize, frsize: s.bsize, blocks: s.blocks, bfree: s.bfree, bavail: s.bavail,
      files: s.files, ffree: s.ffree, favail: s.ffree, fsid: 0, flag: 1 /* ST_RDONLY */, namemax: 255,
    };
  }

  async access(p: string, mode: number, held?: ObjectId): Promise<void> {
    if (mode & fs.constants.W_OK) throw new Errno('EROFS');
    this.tree.access(p, mode, { self: this.realObject(held) });
  }

  async getxattr(p: string, name: string, held?: ObjectId): Promise<Buffer | undefined> {
    return (await this.xattrList(p, this.realObject(held))).get(name);
  }

  async listxattr(p: string, held?: ObjectId): Promise<string[]> {
    return [...(await this.xattrList(p, this.realObject(held))).keys()];
  }

  /**
   * The real object a node stands for: none to check for a node answered as an image (its identity
   * is the image's; mode, owner and xattrs are the library's, read by name).
   */
  private realObject(held?: ObjectId): ObjectId | undefined {
    return held && this.images?.imageOf(held.dev, held.ino) ? undefined : held;
  }

  /** A file's xattrs; from vouched memory when the watcher vouches (setting one is an IN_ATTRIB event). */
  private xattrList(p: string, held?: ObjectId): Promise<Map<string, Buffer>> {
    const real = this.real(p);
    return this.recall(this.meta?.xattrs(real), path.dirname(real), () => this.tree.xattrs(p, { self: held }), (attrs) => this.meta!.recordXattrs(real, attrs));
  }

  openHandles(): number {
    return this.open_.size;
  }
}


/**
 * A library answered as its image: the image's identity, size and times (what the kernel keys its
 * pages on), the real file's type, mode and owner (what `ls -l` and permission checks see).
 */
function servedAttr(real: fs.BigIntStats, image: fs.BigIntStats): Attr {
  const a = toAttr(image);
  return { ...a, mode: Number(real.mode), uid: Number(real.uid), gid: Number(real.gid), nlink: 1 };
}

/** Whether `st` is the object `expect` was answered for: same device, inode and file type. */
function sameObject(st: fs.BigIntStats, expect: Attr): boolean {
  return Number(st.dev) === expect.dev && Number(st.ino) === expect.ino && (Number(st.mode) & S_IFMT) === (expect.mode & S_IFMT);
}

/** The full identity a node was answered with (mtime in ns when the view gave it). */
function identityOfAttr(a: Attr): RealIdentity {
  return { dev: BigInt(a.dev), ino: BigInt(a.ino), size: BigInt(a.size), mtimeNs: a.mtimeNs ?? BigInt(a.mtime.getTime()) * 1000000n };
}

function readAt(fd: number, into: Buffer, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => fs.read(fd, into, 0, length, position, (err, n) => (err ? reject(err) : resolve(n))));
}
