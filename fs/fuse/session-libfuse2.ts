/**
 * The libfuse2 session: fuse-native (libfuse2's high-level, path-based API; a native
 * loop thread hands each request to the JS main thread). It cannot negotiate
 * NO_OPEN or CACHE_SYMLINKS, so every open, release and readlink reaches the view.
 *
 * A file replaced by rename: reads go through the handle OPEN gave (a descriptor of the
 * object opened, real file or flash copy), never through the name, so a process that
 * holds the old file keeps reading the old bytes (test/replace-mapped.test.ts). What
 * this API cannot do is give the new file a kernel inode of its own: libfuse2 names
 * nodes by path, so old and new file would share one page cache (and with auto_cache, a
 * replacement of the same size and mtime would keep the old pages for new launches too).
 * So when a file this session opened changes, it asks the supervisor for a fresh view
 * (Supervisor.renew): the old one drains, serving the programs that mapped old files. A
 * package transaction's end renews it anyway. The kernel session needs none of this (a new
 * node per object, and invalidation notices).
 *
 * The same lack of node identity limits what the view can check: names are resolved beneath
 * the real tree's root through no symlink (fs/view/real-tree.ts), but a directory renamed within the
 * tree over one a process holds is read under the held directory's name, as root, while the
 * kernel still has the held one's attributes (attr_timeout); the kernel session answers ESTALE
 * there (test/security/directory-swap.test.ts runs that case on the kernel session only).
 */
import Fuse from 'fuse-native';
import { execFile } from 'child_process';
import { Attr, errnoOf, FuseSession, SessionOptions, ViewHandlers } from './session';
import { fuseDescriptors } from './fuse-fd';
import { requestRenewal } from '../service/orphan-watch';

type Cb = (code: number, ...values: unknown[]) => void;

/** At ~100 bytes a path, at most a few MiB of names. */
const MAX_OPENED_KEPT = 50000;

export class Libfuse2Session implements FuseSession {
  readonly name = 'libfuse2';
  private readonly counts: Record<string, number> = {};
  private connectionFds = new Set<number>();
  /** Paths of regular files opened through this session: their change needs a fresh view. */
  private readonly opened = new Set<string>();
  /** More files were opened than `opened` keeps: then any change needs a fresh view. */
  private openedOverflow = false;
  private renewalAsked = false;

  constructor(
    private readonly handlers: ViewHandlers,
    private readonly options: SessionOptions,
  ) {}

  requestCounts(): Record<string, number> {
    return { ...this.counts };
  }

  private count(op: string): void {
    this.counts[op] = (this.counts[op] ?? 0) + 1;
  }

  /** Runs a handler and answers the kernel; a handler failure is always an errno, never a crash. */
  private answer<T>(op: string, cb: Cb, work: () => Promise<T>, reply: (value: T) => void): void {
    this.count(op);
    let promise: Promise<T>;
    try {
      promise = work();
    } catch (err) {
      cb(errnoOf(err));
      return;
    }
    promise.then(reply, (err) => cb(errnoOf(err)));
  }

  async mount(): Promise<void> {
    const h = this.handlers;
    const o = this.options;
    const ops = {
      getattr: (p: string, cb: Cb) => this.answer('getattr', cb, () => h.getattr(p), (a: Attr) => cb(0, a)),
      readdir: (p: string, cb: Cb) => this.answer('readdir', cb, () => h.readdir(p), (names) => cb(0, names)),
      readlink: (p: string, cb: Cb) => this.answer('readlink', cb, () => h.readlink(p), (t) => cb(0, t)),
      open: (p: string, flags: number, cb: Cb) => this.answer('open', cb, () => h.open(p, flags), (fh) => {
        this.noteOpened(p);
        cb(0, fh);
      }),
      read: (_p: string, fh: number, buf: Buffer, len: number, pos: number, cb: Cb) =>
        this.answer('read', cb, () => h.read(fh, buf, len, pos), (n) => cb(n)),
      release: (_p: string, fh: number, cb: Cb) => this.answer('release', cb, () => h.release(fh), () => cb(0)),
      statfs: (p: string, cb: Cb) => this.answer('statfs', cb, () => h.statfs(p), (s) => cb(0, s)),
      access: (p: string, mode: number, cb: Cb) => this.answer('access', cb, () => h.access(p, mode), () => cb(0)),
      getxattr: (p: string, name: string, _pos: number, cb: Cb) =>
        this.answer('getxattr', cb, () => h.getxattr(p, name), (v) => (v ? cb(0, v) : cb(Fuse.ENODATA))),
      listxattr: (p: string, cb: Cb) => this.answer('listxattr', cb, () => h.listxattr(p), (names) => cb(0, names)),
    };
    // fuse-native has no option for these, but joins its options into one -o string;
    // fsname is placed so that the extra libfuse2 options follow it.
    // The kernel counts validity from its last answer, and a change just after that answer
    // is seen only at the next request: 90% of each timeout keeps "seen within the configured
    // time" true with room for that round trip (this session cannot tell the kernel sooner).
    const within = (seconds: number) => seconds * 0.9;
    // nonempty: the mount point holds links to the real tree underneath (fs/view/view-dir.ts); libfuse2 refuses it without.
    // suid: libfuse2 mounts nosuid by default, and exec then ignores the setuid bits and file
    // capabilities that the view serves unchanged from the real tree (the kernel session mounts without nosuid).
    const extra = [`negative_timeout=${within(o.negativeTimeout)}`, 'ro', 'suid', 'subtype=fscache', 'nonempty'].join(',');
    const fuse = new Fuse(o.mountpoint, ops, {
      fsname: `${o.fsname},${extra}`,
      // auto_cache: libfuse2 keeps page cache across opens only while mtime and size are unchanged.
      autoCache: true,
      attrTimeout: within(o.attrTimeout),
      entryTimeout: within(o.entryTimeout),
      acAttrTimeout: within(o.attrTimeout),
      // Other users launch programs through the view; the kernel checks their permissions
      // against the real tree's modes (default_permissions), not this root process.
      allowOther: true,
      defaultPermissions: true,
      // Answers slow handlers (a slow real disk) late rather than with a 15 s EIO.
      timeout: false,
    } as Record<string, unknown>);
    const before = fuseDescriptors();
    await new Promise<void>((resolve, reject) => fuse.mount((err?: Error | null) => (err ? reject(err) : resolve())));
    this.connectionFds = new Set([...fuseDescriptors()].filter((fd) => !before.has(fd)));
  }

  invalidateAll(): void {
    // As invalidate(): the timeouts bound it.
  }

  private noteOpened(p: string): void {
    if (this.opened.size < MAX_OPENED_KEPT) this.opened.add(p);
    else if (!this.opened.has(p)) this.openedOverflow = true;
  }

  invalidate(p: string): void {
    // libfuse2's high-level API cannot send invalidation notifications. For a name never
    // opened, auto_cache and the 1 s timeouts bound how long the kernel shows the old one;
    // an opened file may have pages cached under its path's node: only a fresh view drops them.
    if (this.renewalAsked || !(this.openedOverflow || this.opened.has(p))) return;
    this.renewalAsked = requestRenewal();
  }

  async detach(): Promise<void> {
    // fusermount -uz: a lazy unmount; users keep the files they have open or mapped.
    await new Promise<void>((resolve) =>
      execFile(this.options.program?.('fusermount') ?? 'fusermount', ['-uz', this.options.mountpoint], () => resolve()),
    );
  }

  async closed(): Promise<void> {
    // libfuse2's loop thread closes the /dev/fuse descriptor when the kernel ends the connection.
    while ([...this.connectionFds].some((fd) => fuseDescriptors().has(fd))) {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
