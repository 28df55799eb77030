/**
 * The narrow interface between the view and a FUSE binding. The view implements
 * ViewHandlers (path-based, promise-returning, errors as errno codes); a session
 * mounts them and delivers the kernel's requests. Bindings: libfuse2 (fuse-native)
 * now; a session speaking the kernel protocol itself can sit behind the same interface.
 */
import * as os from 'os';
import type { ObjectId } from '../../core/identity';
import type { Logger } from '../../core/log';

export interface Attr {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  dev: number;
  ino: number;
  nlink: number;
  rdev: number;
  blksize: number;
  blocks: number;
  atime: Date;
  mtime: Date;
  ctime: Date;
  /** mtime in nanoseconds when the view knows it: identity checks compare it. */
  mtimeNs?: bigint;
}

export interface FsStats {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail: number;
  fsid: number;
  flag: number;
  namemax: number;
}

/** File handle numbers are the view's own, not descriptors. */
export type Handle = number;

/**
 * `parent` / `held`: the object a session's node for the path's directory / for the path was
 * looked up as; where given, an answer read from another object is ESTALE (fs/view/real-tree.ts).
 */
export interface ViewHandlers {
  getattr(path: string, parent?: ObjectId): Promise<Attr>;
  readdir(path: string, held?: ObjectId): Promise<string[]>;
  readlink(path: string, held?: ObjectId): Promise<string>;
  /**
   * With `expect`, the handle reads only the object those attributes describe (same device
   * and inode; a flash copy only of exactly that version): a name now naming another file
   * is EIO, never that file's bytes. Kernel nodes are bound to what they were looked up as.
   */
  open(path: string, flags: number, expect?: Attr): Promise<Handle>;
  read(handle: Handle, into: Buffer, length: number, position: number): Promise<number>;
  release(handle: Handle): Promise<void>;
  statfs(path: string): Promise<FsStats>;
  access(path: string, mode: number, held?: ObjectId): Promise<void>;
  getxattr(path: string, name: string, held?: ObjectId): Promise<Buffer | undefined>;
  listxattr(path: string, held?: ObjectId): Promise<string[]>;
  /**
   * Seconds the kernel may keep what it was just told about `path` (its attributes, or
   * its name's presence or absence) because a watcher will report a change sooner;
   * 0 when nothing watches it. Sessions that can be told of changes may use it.
   */
  vouchedSeconds?(path: string): number;
  /**
   * Whether the handle reads a flash copy (which a change in place makes stale), not the real
   * object (which always reads as that object now reads).
   */
  readsCopy?(handle: Handle): boolean;
}

export interface SessionOptions {
  mountpoint: string;
  /** Seconds the kernel may cache attributes, lookups, and failed lookups. */
  attrTimeout: number;
  entryTimeout: number;
  negativeTimeout: number;
  fsname: string;
  /**
   * The absolute path of a program the session runs (mount, umount, fusermount): found in
   * the real tree by the caller (fs/service/programs.ts), never through PATH. Default: the bare name,
   * for sessions mounted outside any root (protocol tests).
   */
  program?: (name: string) => string;
  /** The view's logger (its log_level); protocol tests without one get an info logger. */
  log?: Logger;
}

export interface FuseSession {
  readonly name: string;
  mount(): Promise<void>;
  /** Detaches the mount lazily; the session keeps serving whoever still uses it. */
  detach(): Promise<void>;
  /** Resolves when the kernel has closed the connection (last user gone after detach). */
  closed(): Promise<void>;
  /** Requests delivered to the view, by operation name, since mount. */
  requestCounts(): Record<string, number>;
  /**
   * The real file at `path` (view path, leading slash) changed or went away: drop what
   * the session and the kernel cached for it. Sessions that cannot notify the kernel
   * rely on their cache timeouts (libfuse2: attr_timeout, auto_cache at open).
   */
  invalidate(path: string): void;
  /** Anything the kernel caches may be stale (a package operation, a lost watch): drop it all. */
  invalidateAll(): void;
}

/** An error a handler throws to answer with an errno. */
export class Errno extends Error {
  constructor(readonly code: keyof typeof os.constants.errno) {
    super(code);
  }
}

/** The negative errno a handler's failure should be answered with (EIO when unknown). */
export function errnoOf(err: unknown): number {
  const code = typeof err === 'object' && err !== null && 'code' in err ? (err as { code: unknown }).code : undefined;
  const n = typeof code === 'string' ? (os.constants.errno as Record<string, number>)[code] : undefined;
  return -(n ?? os.constants.errno.EIO);
}
