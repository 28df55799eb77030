/**
 * The kernel session: the FUSE protocol spoken directly over /dev/fuse, so that the
 * view can negotiate what libfuse2 cannot and the kernel answers warm launches alone.
 *
 * Promises and the choices they rest on:
 * - No OPEN, OPENDIR, RELEASE or READLINK on a warm launch: NO_OPEN_SUPPORT and
 *   NO_OPENDIR_SUPPORT (the first OPEN/OPENDIR is answered ENOSYS and the kernel
 *   stops sending them, keeping pages and directory listings across opens),
 *   CACHE_SYMLINKS (link targets kept in the page cache), and failed lookups answered
 *   as cached negative entries. A kernel that offers fewer flags gets the same view
 *   with more requests: OPEN is then served with a handle of its own.
 * - A process that mapped a file keeps the bytes it mapped until it exits: a node is
 *   bound to the object it was looked up as (fuse-nodes.ts), its reads come from a view
 *   handle opened for that object at its first READ and held until FORGET (EIO when no
 *   source of exactly those bytes is left, never other bytes), and GETATTR of a node
 *   whose name now names another file answers the node's own attributes. A LOOKUP in a node,
 *   its READDIR, READLINK, ACCESS and xattrs read only the node's own object (ESTALE else):
 *   a user who swaps a directory under a held node never makes root read what is there now.
 * - Never stale: with no OPEN reaching userspace, the view's identity check (real file
 *   vs flash copy) runs at the first READ of a node, i.e. at the first read of a cold
 *   page. invalidate() (the watcher, within a second of a change) tells the kernel to
 *   drop the name (FUSE_NOTIFY_INVAL_ENTRY: the next lookup makes a new node for a new
 *   file); only a change in place of the node's own object also drops the node's handle,
 *   pages and attributes (FUSE_NOTIFY_INVAL_INODE). Where the watcher
 *   does not look (a directory holding no cached file, inotify limits reached), names
 *   and attributes are re-checked after entry_timeout/attr_timeout, and AUTO_INVAL_DATA
 *   makes the kernel drop a file's pages when refreshed attributes show another mtime
 *   or size: a new open-and-read then sees the new file within those timeouts, but a
 *   process that keeps the old file mapped may keep its cached pages until the watcher
 *   or an admin (`fscache stop`/`start`) drops them. `fscache verify` checks the store.
 *   Answers about names in watched directories are kept by the kernel for
 *   metadata_trust_seconds (the bound of the view's vouched memory, which also bounds
 *   what a lost inotify event could leave stale); elsewhere the config's timeouts
 *   (1 s by default) apply.
 * - Never blocks the JS main thread on the device: requests are read on a thread of their
 *   own (fuse-reader.ts, which answers IOCTLs and vouched-absent capability GETXATTRs
 *   itself, the requests of a warm launch); replies are written with
 *   writeSync (the kernel takes them without waiting); notifications, which may wait for
 *   page locks held by a READ we have yet to answer, are written asynchronously, one at a time.
 * - Every request gets exactly one reply (FORGET, BATCH_FORGET and INTERRUPT get none,
 *   as the protocol says); a handler error becomes its errno; an unknown opcode ENOSYS.
 * - The view outlives its users: detach() is a lazy unmount and the session keeps
 *   serving until the kernel ends the connection (reads return ENODEV).
 */
import { execFile, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import { FsCacheError } from '../../core/errors';
import {
  cString, direntSize, DT_UNKNOWN, encodeAttrOut, encodeEntryOut, encodeInitOut, encodeInvalEntry, encodeInvalInode,
  encodeOpenOut, encodeStatfsOut, encodeXattrSize, FOPEN_KEEP_CACHE, FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION,
  FUSE_MIN_READ_BUFFER, FUSE_ROOT_ID, FUSE_UNKNOWN_INO, InitFlag, initFlagNames, Op, opName, OUT_HEADER_SIZE, parseBatchForget,
  parseInitIn, parseReadIn, parseRequest, Request, WRITE_OPS, writeDirent, writeOutHeader,
} from './fuse-protocol';
import { FuseReader } from './fuse-reader';
import { NodeHandles } from './node-handles';
import { NotificationQueue } from './notifications';
import { GENERATION, held, identityKey, Node, NodeFile, NodeTable, sameObject } from './fuse-nodes';
import { Logger, makeLogger } from '../../core/log';
import { Attr, Errno, errnoOf, FuseSession, SessionOptions, ViewHandlers } from './session';

const E = os.constants.errno;
/**
 * Largest WRITE the kernel may send (none on this read-only mount). It sizes the read
 * buffers: the kernel never queues a request larger than max_write plus its headers, and
 * refuses (EINVAL) a read into a buffer smaller than that, so no request is ever split.
 */
const MAX_WRITE = 128 * 1024;
/**
 * READs of up to 128 KiB, as libfuse2's. Measured on cold launches from the slow disk
 * (bench/cold.js, same run each): with 256 pages (1 MiB) the kernel's readahead fetched up
 * to 1 MiB per fault of a sparsely used library, and launches were 9.5-19x faster than
 * the disk; with 32 pages 17-21x.
 */
const MAX_PAGES = 32;
const READ_BUFFER_SIZE = OUT_HEADER_SIZE + MAX_PAGES * 4096;
/** What we ask for at INIT; each is kept only if the kernel offers it. */
const WANTED_FLAGS =
  InitFlag.ASYNC_READ | // several READs of one file in flight (readahead and faults together)
  InitFlag.NO_OPEN_SUPPORT |
  InitFlag.NO_OPENDIR_SUPPORT |
  InitFlag.CACHE_SYMLINKS |
  InitFlag.PARALLEL_DIROPS | // lookups in one directory do not wait for each other
  InitFlag.MAX_PAGES |
  InitFlag.AUTO_INVAL_DATA; // refreshed attributes with another mtime/size drop cached pages
const FUSE_DEVICE = '/dev/fuse';
const TRAILING_INVALIDATION_MS = 150;
const DT_DIR = 4;

type Reply = Buffer | undefined;

export class KernelSession implements FuseSession {
  readonly name = 'kernel';
  // FSCACHE_SESSION_DEBUG=1 logs every request and notification, whatever the view's log_level.
  private readonly debug = !!process.env.FSCACHE_SESSION_DEBUG;
  private readonly log: Logger;
  private readonly nodes = new NodeTable();
  private readonly counts: Record<string, number> = {};
  private fd = -1;
  /** Flags granted at INIT (offered ∩ wanted). */
  private flags = 0;
  private initialized = false;
  private onInit?: (err?: Error) => void;
  private reader?: FuseReader;
  private resolveClosed?: () => void;
  private readonly closedPromise: Promise<void>;
  /** Handles given out by OPEN when the kernel cannot do without it (no NO_OPEN_SUPPORT). */
  private readonly openFiles = new Map<number, NodeFile>();
  private nextFh = 1;
  private readonly notifications: NotificationQueue;
  private readonly handles: NodeHandles;
  private readonly readBuffers: Buffer[] = [];
  /** Paths with a trailing invalidation pending (see invalidate). */
  private readonly trailing = new Map<string, NodeJS.Timeout>();

  constructor(
    readonly handlers: ViewHandlers,
    readonly options: SessionOptions,
  ) {
    this.log = this.debug ? makeLogger('debug') : options.log ?? makeLogger('info');
    this.notifications = new NotificationQueue(() => this.fd, this.log, this.debug);
    this.closedPromise = new Promise((resolve) => (this.resolveClosed = resolve));
    this.handles = new NodeHandles(handlers, this.log);
    // A notification write may wait for the kernel, parking a libuv threadpool thread; the
    // default pool of 4 would leave the view's own file operations too few. Takes effect
    // because libuv starts the pool at its first use, which in the view comes after this.
    process.env.UV_THREADPOOL_SIZE ??= '16';
  }

  private program(name: string): string {
    return this.options.program?.(name) ?? name;
  }

  requestCounts(): Record<string, number> {
    const counts = { ...this.counts };
    for (const [op, n] of Object.entries(this.reader?.answered() ?? {})) if (n) counts[op] = (counts[op] ?? 0) + n;
    return counts;
  }

  // ---------------------------------------------------------------- mount and connection

  async mount(): Promise<void> {
    const o = this.options;
    this.fd = fs.openSync(FUSE_DEVICE, 'r+');
    const uid = process.getuid?.() ?? 0;
    const gid = process.getgid?.() ?? 0;
    const options = [
      'fd=3', // the descriptor below, inherited by mount(8) as its fd 3
      'rootmode=40000',
      `user_id=${uid}`,
      `group_id=${gid}`,
      // Other users launch programs through the view; the kernel checks their permissions
      // against the real tree's modes (default_permissions), not this root process.
      'allow_other',
      'default_permissions',
      // Read-only at the VFS: writes fail with EROFS before they reach us.
      'ro',
    ].join(',');
    const inited = new Promise<void>((resolve, reject) => (this.onInit = (err) => (err ? reject(err) : resolve())));
    try {
      // -i: no /sbin/mount.fuse.fscache helper; the mount syscall itself with our descriptor.
      await runMount(this.program('mount'), ['-i', '-t', 'fuse.fscache', '-o', options, o.fsname, o.mountpoint], this.fd);
    } catch (err) {
      fs.closeSync(this.fd);
      this.fd = -1;
      throw new FsCacheError('environment', `mounting the view at ${o.mountpoint} failed: ${(err as Error).message}`);
    }
    // Reads of a descriptor not yet attached to a mount fail (EPERM): read only now. The
    // kernel queued FUSE_INIT during the mount syscall and holds every other request until
    // it is answered.
    this.reader = new FuseReader(this.fd, Math.max(FUSE_MIN_READ_BUFFER, MAX_WRITE + 4096), o.mountpoint, {
      request: (buf) => {
        try {
          this.dispatch(buf, buf.length);
        } catch (e) {
          this.log.error(`kernel session: request not handled: ${(e as Error).stack ?? e}`);
        }
      },
      ended: (code) => {
        // ENODEV: the connection is gone (last user after a lazy unmount, or aborted).
        if (code !== 'ENODEV') this.log.warn(`kernel session: /dev/fuse read ended with ${code}`);
        this.connectionClosed();
      },
      warning: (code) => this.log.warn(`kernel session: /dev/fuse read failed: ${code}`),
    });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_r, reject) => (timer = setTimeout(() => reject(new Error('no FUSE_INIT from the kernel within 10 s')), 10000)));
    try {
      await Promise.race([inited, timeout]);
    } catch (err) {
      await this.detach();
      throw new FsCacheError('environment', `the kernel did not start the FUSE connection: ${(err as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
  }

  async detach(): Promise<void> {
    // A lazy unmount: the name goes now, users keep the files they have open or mapped,
    // and the kernel ends the connection when the last one is gone.
    const ok = await run(this.program('umount'), ['-l', this.options.mountpoint]);
    if (!ok) await run(this.program('fusermount'), ['-uz', this.options.mountpoint]);
  }

  closed(): Promise<void> {
    return this.fd < 0 && !this.initialized ? Promise.resolve() : this.closedPromise;
  }

  /** The reader saw the connection close: release everything. */
  private connectionClosed(): void {
    if (this.fd < 0) return;
    fs.close(this.fd, () => undefined);
    this.fd = -1;
    this.log.info(`kernel session: the kernel closed the connection (${this.nodes.size} nodes were held)`);
    for (const node of this.nodes.all()) this.handles.drop(node);
    for (const file of this.openFiles.values()) this.handles.giveBack(file);
    this.openFiles.clear();
    this.onInit?.(new Error('the connection closed before FUSE_INIT'));
    this.resolveClosed?.();
  }

  // ---------------------------------------------------------------- replies

  private write(unique: bigint, error: number, body?: Reply): boolean {
    const len = OUT_HEADER_SIZE + (body?.length ?? 0);
    const out = Buffer.allocUnsafe(len);
    writeOutHeader(out, len, error, unique);
    body?.copy(out, OUT_HEADER_SIZE);
    return this.writeRaw(out);
  }

  private writeRaw(out: Buffer): boolean {
    if (this.fd < 0) return false;
    try {
      fs.writeSync(this.fd, out);
      return true;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // ENOENT: the request was interrupted or aborted meanwhile; ENODEV: the connection is gone.
      if (code !== 'ENOENT' && code !== 'ENODEV') this.log.warn(`kernel session: reply not written: ${code}`);
      return false;
    }
  }

  private replyError(unique: bigint, errno: number): void {
    this.write(unique, errno);
  }

  // ---------------------------------------------------------------- dispatch

  private count(name: string): void {
    this.counts[name] = (this.counts[name] ?? 0) + 1;
  }

  private dispatch(buf: Buffer, n: number): void {
    const req = parseRequest(buf, n);
    if (!req) {
      this.log.warn(`kernel session: malformed request of ${n} bytes ignored`);
      return;
    }
    this.count(opName(req.opcode));
    try {
      this.route(req);
    } catch (err) {
      // A request whose body is too short for its opcode: still exactly one reply.
      this.log.warn(`kernel session: ${opName(req.opcode)} request not understood: ${(err as Error).message}`);
      if (!NO_REPLY_OPS.has(req.opcode)) this.replyError(req.unique, -E.EIO);
    }
  }

  private route(req: Request): void {
    switch (req.opcode) {
      case Op.INIT:
        return this.init(req);
      case Op.FORGET:
        return this.forget(req.nodeid, Number(req.body.readBigUInt64LE(0)));
      case Op.BATCH_FORGET:
        for (const [id, n2] of parseBatchForget(req.body)) this.forget(id, n2);
        return;
      case Op.INTERRUPT:
        // No reply. Our handlers finish quickly and answer the interrupted request then.
        return;
      case Op.NOTIFY_REPLY:
        return; // answers a retrieve we never send
      case Op.IOCTL:
        // Python's isatty (TCGETS) on every file it opens; the kernel does not remember
        // ENOSYS for ioctl, so answer what a regular file would. The reader thread answers
        // them before they get here; this is for any it passes on.
        return this.replyError(req.unique, -E.ENOTTY);
      case Op.FLUSH:
      case Op.FSYNC:
      case Op.FSYNCDIR:
        return this.replyError(req.unique, -E.ENOSYS); // remembered: never sent again
      case Op.RELEASEDIR:
        return this.replyError(req.unique, 0);
      case Op.DESTROY:
        return this.replyError(req.unique, 0);
      case Op.GETXATTR:
        if (this.getxattrCached(req)) return;
        break;
    }
    if (WRITE_OPS.has(req.opcode)) return this.replyError(req.unique, -E.EROFS);
    // The request's buffer is its own (fuse-reader.ts): handlers may keep it past this call.
    const work = this.operation(req);
    if (!work) return this.replyError(req.unique, -E.ENOSYS);
    work.then(
      (body) => {
        if (body !== NO_REPLY) this.write(req.unique, 0, body);
      },
      (err) => this.replyError(req.unique, errnoOf(err)),
    );
  }

  /** The handler of an operation that needs the view, or undefined when we do not implement it. */
  private operation(r: Request): Promise<Reply> | undefined {
    const call = (fn: (r: Request) => Promise<Reply>): Promise<Reply> => {
      try {
        return fn.call(this, r);
      } catch (err) {
        return Promise.reject(err);
      }
    };
    switch (r.opcode) {
      case Op.LOOKUP: return call(this.lookup);
      case Op.GETATTR: return call(this.getattr);
      case Op.READLINK: return call(this.readlink);
      case Op.OPEN: return call(this.open);
      case Op.OPENDIR: return call(this.opendir);
      case Op.READ: return call(this.read);
      case Op.RELEASE: return call(this.release);
      case Op.READDIR: return call(this.readdir);
      case Op.STATFS: return call(this.statfs);
      case Op.ACCESS: return call(this.access);
      case Op.GETXATTR: return call(this.getxattr);
      case Op.LISTXATTR: return call(this.listxattr);
      default: return undefined;
    }
  }

  private node(id: number): Node {
    const node = this.nodes.get(id);
    if (!node) {
      if (this.debug) this.log.debug(`kernel session: request for unknown node ${id}`);
      throw new Errno('ESTALE');
    }
    return node;
  }

  // ---------------------------------------------------------------- operations

  private init(r: Request): void {
    const k = parseInitIn(r.body);
    if (k.major !== FUSE_KERNEL_VERSION) {
      this.log.error(`kernel session: the kernel speaks FUSE ${k.major}.${k.minor}; only major ${FUSE_KERNEL_VERSION} is supported`);
      this.replyError(r.unique, -E.EPROTO);
      this.onInit?.(new Error(`unsupported FUSE protocol ${k.major}.${k.minor}`));
      return;
    }
    const minor = Math.min(k.minor, FUSE_KERNEL_MINOR_VERSION);
    this.flags = (k.flags & WANTED_FLAGS & ~refusedFlags()) >>> 0;
    const missing = initFlagNames(WANTED_FLAGS & ~this.flags);
    this.write(r.unique, 0, encodeInitOut({
      minor,
      maxReadahead: k.maxReadahead,
      flags: this.flags,
      maxBackground: 64,
      congestionThreshold: 48,
      maxWrite: MAX_WRITE,
      maxPages: MAX_PAGES,
    }));
    this.initialized = true;
    this.log.info(
      `kernel session: FUSE ${k.major}.${k.minor} (speaking 7.${minor}), flags ${initFlagNames(this.flags).join(' ')}` +
        (missing.length ? `; without ${missing.join(' ')} (not offered or refused: more requests reach the view)` : ''),
    );
    this.onInit?.();
  }

  private granted(flag: number): boolean {
    return (this.flags & flag) !== 0;
  }

  /**
   * Timeouts (seconds, from the config): the kernel keeps a name→node answer for
   * entry_timeout, attributes for attr_timeout and a failed lookup for negative_timeout.
   * The watcher's notifications make changes visible sooner in watched directories;
   * elsewhere these bound how long a change can stay unseen.
   */
  private async lookup(r: Request): Promise<Reply> {
    const parent = this.node(r.nodeid);
    const name = cString(r.body);
    const childPath = NodeTable.childPath(parent, name);
    if (this.debug) this.log.debug(`kernel session: lookup ${childPath}`);
    let attr: Attr;
    try {
      // Looked up in the directory the kernel holds as `parent`, not in what its name names now (ESTALE).
      attr = await this.handlers.getattr(childPath, held(parent));
    } catch (err) {
      const errno = errnoOf(err);
      // A missing name as a successful entry with node id 0: the kernel caches it as a
      // negative dentry (a launch probes dozens of absent library paths).
      const negative = Math.max(this.options.negativeTimeout, this.vouched(childPath));
      if ((errno === -E.ENOENT || errno === -E.ENOTDIR) && negative > 0) return encodeEntryOut(0, 0, negative, 0);
      throw err;
    }
    // A replaced node keeps its handle: processes that hold the old file read it through it.
    const { node } = this.nodes.lookedUp(parent, name, attr);
    this.sawAttr(node, attr);
    const vouched = this.vouched(childPath);
    const body = encodeEntryOut(node.id, GENERATION, Math.max(this.options.entryTimeout, vouched), Math.max(this.options.attrTimeout, vouched), attr);
    // Written here, not by dispatch, so that a reply the kernel never took gives the reference back.
    if (!this.write(r.unique, 0, body)) this.forget(node.id, 1);
    return NO_REPLY;
  }

  private forget(id: number, n: number): void {
    const gone = this.nodes.forget(id, n);
    if (this.debug) this.log.debug(`kernel session: forget ${id} ${n}${gone ? ` (${gone.path} gone)` : ''}`);
    if (gone) this.handles.drop(gone);
  }

  private async getattr(r: Request): Promise<Reply> {
    const node = this.node(r.nodeid);
    const attr = await this.currentAttr(node);
    if (!attr) {
      // The name names another file now, or nothing: this node is still the object it was
      // looked up as (someone holds it). Its own attributes keep the kernel from shrinking
      // or dropping the pages of a file that processes still map.
      return encodeAttrOut(this.options.attrTimeout, node.attr!);
    }
    this.sawAttr(node, attr);
    return encodeAttrOut(Math.max(this.options.attrTimeout, this.vouched(node.path)), attr);
  }

  /** The attributes of the object at the node's name, or undefined when that is no longer the node's object. */
  private async currentAttr(node: Node): Promise<Attr | undefined> {
    let attr: Attr;
    try {
      attr = await this.handlers.getattr(node.path);
    } catch (err) {
      if (!node.attr || node.id === FUSE_ROOT_ID) throw err;
      return undefined;
    }
    return !node.attr || node.id === FUSE_ROOT_ID || sameObject(node.attr, attr) ? attr : undefined;
  }

  /**
   * Seconds the kernel may keep an answer about `path` beyond the configured timeouts:
   * as long as the view's watcher vouches for it, because invalidate() will tell the
   * kernel of a change (its trailing repeat also covers a change that races the reply).
   * Where nothing watches (watch = off, watch_max_dirs or inotify limits reached) this
   * is 0 and the configured timeouts bound staleness.
   */
  private vouched(path: string): number {
    return this.handlers.vouchedSeconds?.(path) ?? 0;
  }

  /**
   * New attributes of the node's own object. Another size or mtime is a change in place:
   * the handle goes (it may read a flash copy of the old content; the next READ reopens).
   */
  private sawAttr(node: Node, attr: Attr): void {
    const key = identityKey(attr);
    if (node.key !== undefined && node.key !== key) this.handles.drop(node);
    node.key = key;
    node.attr = attr;
    if (node.ctimeMs !== attr.ctime.getTime()) this.forgetXattrs(node);
    node.ctimeMs = attr.ctime.getTime();
  }

  private forgetXattrs(node: Node): void {
    node.xattrs = undefined;
    this.reader?.forgetCapability(node.id);
  }

  private async readlink(r: Request): Promise<Reply> {
    // Cached by the kernel (CACHE_SYMLINKS) until invalidated.
    if (this.debug) this.log.debug(`kernel session: readlink ${this.node(r.nodeid).path}`);
    const node = this.node(r.nodeid);
    return Buffer.from(await this.handlers.readlink(node.path, held(node)));
  }

  private async open(r: Request): Promise<Reply> {
    // ENOSYS once: the kernel stops sending OPEN and RELEASE, and keeps pages across opens.
    if (this.granted(InitFlag.NO_OPEN_SUPPORT)) throw new Errno('ENOSYS');
    const node = this.node(r.nodeid);
    const handle = await this.handlers.open(node.path, r.body.readUInt32LE(0), node.attr);
    const fh = this.nextFh++;
    this.openFiles.set(fh, { handle: Promise.resolve(handle), inflight: 0, dropped: false, lastUsed: Date.now() });
    // Pages stay cached across opens; invalidate() and AUTO_INVAL_DATA drop changed ones.
    return encodeOpenOut(fh, FOPEN_KEEP_CACHE);
  }

  private async opendir(r: Request): Promise<Reply> {
    if (this.granted(InitFlag.NO_OPENDIR_SUPPORT)) throw new Errno('ENOSYS'); // once; listings then cached
    this.node(r.nodeid);
    return encodeOpenOut(0, 0);
  }

  private async release(r: Request): Promise<Reply> {
    const fh = Number(r.body.readBigUInt64LE(0));
    const file = this.openFiles.get(fh);
    if (file) {
      this.openFiles.delete(fh);
      this.handles.giveBack(file);
    }
    return undefined;
  }

  /**
   * READ by node: the node's view handle is opened at its first READ for the node's
   * object (the view's identity check runs there) and kept until FORGET or a change in
   * place; never reopened by name for a node whose name now names another file.
   */
  private async read(r: Request): Promise<Reply> {
    const { fh, offset, size } = parseReadIn(r.body);
    const node = this.node(r.nodeid);
    const file = fh !== 0 && this.openFiles.has(fh) ? this.openFiles.get(fh)! : this.handles.of(node);
    file.inflight++;
    file.lastUsed = Date.now();
    const out = this.takeReadBuffer(OUT_HEADER_SIZE + size);
    try {
      const handle = await file.handle;
      const n = await this.handlers.read(handle, out.subarray(OUT_HEADER_SIZE), size, offset);
      writeOutHeader(out, OUT_HEADER_SIZE + n, 0, r.unique);
      this.writeRaw(out.subarray(0, OUT_HEADER_SIZE + n));
      return NO_REPLY;
    } finally {
      this.readBuffers.push(out);
      file.inflight--;
      this.handles.readDone(file);
    }
  }

  /**
   * Reply buffers of READs are reused: a cold launch reads megabytes in 128 KiB replies,
   * and a fresh buffer each is garbage the collector then stops the view to free.
   */
  private takeReadBuffer(length: number): Buffer {
    const reused = length <= READ_BUFFER_SIZE ? this.readBuffers.pop() : undefined;
    return reused ?? Buffer.allocUnsafe(Math.max(length, READ_BUFFER_SIZE));
  }

  /**
   * READDIR: names read at offset 0 and kept on the node for the following offsets (the
   * offset is the index of the next name). d_type is DT_UNKNOWN (callers that need the
   * type stat the name; we do not stat every entry of a /usr-sized directory for them).
   */
  private async readdir(r: Request): Promise<Reply> {
    const { offset, size } = parseReadIn(r.body);
    const node = this.node(r.nodeid);
    if (offset === 0 || !node.listing) {
      const names = await this.handlers.readdir(node.path, held(node));
      node.listing = ['.', '..', ...names].map((n) => Buffer.from(n));
    }
    const listing = node.listing;
    const out = Buffer.alloc(size);
    let pos = 0;
    let i = offset;
    for (; i < listing.length; i++) {
      const need = direntSize(listing[i].length);
      if (pos + need > size) break;
      pos += writeDirent(out, pos, FUSE_UNKNOWN_INO, i + 1, i < 2 ? DT_DIR : DT_UNKNOWN, listing[i]);
    }
    if (i >= listing.length && pos === 0) node.listing = undefined; // the end was read
    return out.subarray(0, pos);
  }

  private async statfs(r: Request): Promise<Reply> {
    return encodeStatfsOut(await this.handlers.statfs(this.node(r.nodeid).path));
  }

  private async access(r: Request): Promise<Reply> {
    const node = this.node(r.nodeid);
    await this.handlers.access(node.path, r.body.readUInt32LE(0), held(node));
    return undefined;
  }

  /**
   * GETXATTR: size 0 is a probe answered with the value's size; a too small buffer is
   * ERANGE. Every exec asks for security.capability, and the kernel does not cache the
   * answer, so answers are kept on the node like attributes (attr_timeout, dropped by
   * invalidate) and a repeated question is answered at once, without a view round trip.
   */
  private async getxattr(r: Request): Promise<Reply> {
    const size = r.body.readUInt32LE(0);
    const name = cString(r.body, 8);
    const node = this.node(r.nodeid);
    const value = await this.handlers.getxattr(node.path, name, held(node));
    (node.xattrs ??= new Map()).set(name, { value, at: Date.now() });
    // Every exec asks this; the reader thread answers it while the watcher vouches (or
    // for attr_timeout), and forgets it with the node's other xattrs (forgetXattrs). Only
    // "absent" is answered there: a stale answer could withhold a capability, never grant one.
    if (name === 'security.capability' && value === undefined) {
      this.reader?.vouchNoCapability(node.id, Math.max(this.options.attrTimeout, this.vouched(node.path)));
    }
    return xattrReply(value, size);
  }

  /** Answers a GETXATTR from the node's cache; false when it must ask the view. */
  private getxattrCached(req: Request): boolean {
    const cached = this.nodes.get(req.nodeid)?.xattrs?.get(cString(req.body, 8));
    if (!cached || Date.now() - cached.at >= this.options.attrTimeout * 1000) return false;
    let body: Buffer;
    try {
      body = xattrReply(cached.value, req.body.readUInt32LE(0));
    } catch (err) {
      this.replyError(req.unique, errnoOf(err));
      return true;
    }
    this.write(req.unique, 0, body);
    return true;
  }

  private async listxattr(r: Request): Promise<Reply> {
    const size = r.body.readUInt32LE(0);
    const node = this.node(r.nodeid);
    const names = await this.handlers.listxattr(node.path, held(node));
    return sized(Buffer.concat(names.map((n) => Buffer.from(n + '\0'))), size);
  }

  // ---------------------------------------------------------------- invalidation

  /**
   * The real file at `path` changed, appeared or went away: tell the kernel to drop the
   * name in its directory (positive or negative) and the directory's cached listing; if
   * the node of that name is still the object at it (changed in place), also drop its
   * handle (the next READ reopens it) and its pages and attributes. A node whose name now
   * names another object or nothing keeps all of that for the processes holding it.
   */
  invalidate(path: string): void {
    void this.invalidateNow(path);
    // Once more a little later: file watchers coalesce events (chokidar drops a second
    // 'change' of a path within 50 ms of the first), so a replacement right after a
    // change could otherwise stay unseen for entry_timeout.
    clearTimeout(this.trailing.get(path));
    const timer = setTimeout(() => {
      this.trailing.delete(path);
      void this.invalidateNow(path);
    }, TRAILING_INVALIDATION_MS);
    timer.unref();
    this.trailing.set(path, timer);
  }

  /**
   * Drops every name the kernel holds below the root: invalidating a directory's entry
   * drops the cached entries below it too (positive and negative), so the top level is enough.
   */
  invalidateAll(): void {
    for (const node of this.nodes.all()) if (node.parent === FUSE_ROOT_ID && node.id !== FUSE_ROOT_ID) void this.invalidateNow(node.path);
  }

  private async invalidateNow(path: string): Promise<void> {
    if (!this.initialized || this.fd < 0) return;
    const node = this.nodes.byViewPath(path);
    this.log.debug(`kernel session: invalidate ${path} (node ${node?.id ?? 'none'})`);
    if (node) {
      node.listing = undefined;
      this.forgetXattrs(node);
      // Only a change of the node's own object drops its pages: when the name was renamed
      // over or removed, processes that hold the old file keep its bytes, and the name's
      // invalidation below makes the next lookup give the new file a new node.
      if (await this.currentAttr(node).catch(() => undefined)) {
        // A handle on a flash copy goes (the next READ reopens, checked against the name's
        // object then); one on the real object stays: it reads what the object holds now, and
        // it may be the only way left to that object (a link count change, then a rename over
        // the name, as dpkg does: reopening by name then found the new file, and mapped pages
        // of the old one faulted in as SIGBUS).
        const handle = node.file ? await node.file.handle.catch(() => undefined) : undefined;
        if (node.file && (handle === undefined || this.handlers.readsCopy?.(handle) !== false)) this.handles.drop(node);
        this.notifications.push(`i${node.id}`, encodeInvalInode(node.id));
      }
    }
    const slash = path.lastIndexOf('/');
    const name = path.slice(slash + 1);
    const parent = this.nodes.byViewPath(slash <= 0 ? '/' : path.slice(0, slash));
    if (parent && name) {
      parent.listing = undefined;
      this.notifications.push(`e${parent.id}/${name}`, encodeInvalEntry(parent.id, name));
      this.notifications.push(`i${parent.id}`, encodeInvalInode(parent.id));
    }
  }
}

/**
 * Flags named in FSCACHE_SESSION_REFUSE (comma-separated InitFlag names) are not asked
 * for: how the tests see the session on a kernel that offers fewer flags.
 */
function refusedFlags(): number {
  const names = (process.env.FSCACHE_SESSION_REFUSE ?? '').split(',').filter(Boolean);
  return names.reduce((acc, n) => acc | ((InitFlag as Record<string, number>)[n] ?? 0), 0);
}

/** Requests the protocol has no reply for. */
const NO_REPLY_OPS = new Set<number>([Op.FORGET, Op.BATCH_FORGET, Op.INTERRUPT, Op.NOTIFY_REPLY]);

/** Returned by operations that wrote their reply themselves (compared by identity). */
const NO_REPLY: Buffer = Buffer.alloc(0);


function xattrReply(value: Buffer | undefined, size: number): Buffer {
  if (!value) throw new Errno('ENODATA');
  return sized(value, size);
}

function sized(value: Buffer, size: number): Buffer {
  if (size === 0) return encodeXattrSize(value.length);
  if (value.length > size) throw new Errno('ERANGE');
  return value;
}

/** mount(8) with `fd` as its descriptor 3; rejects with its stderr. */
function runMount(mount: string, args: string[], fd: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(mount, args, { stdio: ['ignore', 'ignore', 'pipe', fd] });
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`mount exited with ${code}: ${stderr.trim()}`))));
  });
}

function run(cmd: string, args: string[]): Promise<boolean> {
  return new Promise((resolve) => execFile(cmd, args, (err) => resolve(!err)));
}
