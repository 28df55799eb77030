/**
 * The FUSE kernel protocol as far as a read-only view needs it: opcodes, init flags,
 * and the byte layouts of the structures in include/uapi/linux/fuse.h (all
 * little-endian on x86-64, naturally aligned). Encoding only: nothing here knows
 * about nodes, handlers or descriptors. Names follow the header (FUSE_LOOKUP,
 * FUSE_NO_OPEN_SUPPORT, struct fuse_entry_out) so the spec can be read alongside.
 */
import type { Attr, FsStats } from './session';

/** The protocol version we speak; the kernel's minor is the upper bound (7.31 has all we use). */
export const FUSE_KERNEL_VERSION = 7;
export const FUSE_KERNEL_MINOR_VERSION = 31;
export const FUSE_ROOT_ID = 1;

export const IN_HEADER_SIZE = 40; // struct fuse_in_header
export const OUT_HEADER_SIZE = 16; // struct fuse_out_header
/** The kernel refuses reads of /dev/fuse into smaller buffers than this. */
export const FUSE_MIN_READ_BUFFER = 8192;

export enum Op {
  LOOKUP = 1, FORGET = 2, GETATTR = 3, SETATTR = 4, READLINK = 5, SYMLINK = 6, MKNOD = 8, MKDIR = 9,
  UNLINK = 10, RMDIR = 11, RENAME = 12, LINK = 13, OPEN = 14, READ = 15, WRITE = 16, STATFS = 17,
  RELEASE = 18, FSYNC = 20, SETXATTR = 21, GETXATTR = 22, LISTXATTR = 23, REMOVEXATTR = 24, FLUSH = 25,
  INIT = 26, OPENDIR = 27, READDIR = 28, RELEASEDIR = 29, FSYNCDIR = 30, GETLK = 31, SETLK = 32,
  SETLKW = 33, ACCESS = 34, CREATE = 35, INTERRUPT = 36, BMAP = 37, DESTROY = 38, IOCTL = 39, POLL = 40,
  NOTIFY_REPLY = 41, BATCH_FORGET = 42, FALLOCATE = 43, READDIRPLUS = 44, RENAME2 = 45, LSEEK = 46,
  COPY_FILE_RANGE = 47, SETUPMAPPING = 48, REMOVEMAPPING = 49, SYNCFS = 50, TMPFILE = 51, STATX = 52,
}

/** Request names as counted in requestCounts() (lower case, like the libfuse2 session's). */
export function opName(opcode: number): string {
  const name = Op[opcode] as string | undefined;
  return name ? name.toLowerCase() : `op${opcode}`;
}

/** Operations that would change the tree: the view is read-only, these are answered EROFS. */
export const WRITE_OPS = new Set<number>([
  Op.SETATTR, Op.SYMLINK, Op.MKNOD, Op.MKDIR, Op.UNLINK, Op.RMDIR, Op.RENAME, Op.LINK, Op.WRITE,
  Op.SETXATTR, Op.REMOVEXATTR, Op.CREATE, Op.FALLOCATE, Op.RENAME2, Op.COPY_FILE_RANGE, Op.TMPFILE,
]);

/** fuse_init_in.flags / fuse_init_out.flags */
export const InitFlag = {
  ASYNC_READ: 1 << 0,
  AUTO_INVAL_DATA: 1 << 12,
  DO_READDIRPLUS: 1 << 13,
  NO_OPEN_SUPPORT: 1 << 17,
  PARALLEL_DIROPS: 1 << 18,
  MAX_PAGES: 1 << 22,
  CACHE_SYMLINKS: 1 << 23,
  NO_OPENDIR_SUPPORT: 1 << 24,
} as const;

export function initFlagNames(flags: number): string[] {
  return Object.entries(InitFlag).filter(([, bit]) => (flags & bit) >>> 0 !== 0).map(([name]) => name);
}

/** fuse_open_out.open_flags */
export const FOPEN_KEEP_CACHE = 1 << 1;

/** Notification codes, sent in fuse_out_header.error with unique 0. */
export const FUSE_NOTIFY_INVAL_INODE = 2;
export const FUSE_NOTIFY_INVAL_ENTRY = 3;

/** struct fuse_in_header, plus the bytes after it. */
export interface Request {
  len: number;
  opcode: number;
  unique: bigint;
  nodeid: number;
  uid: number;
  gid: number;
  pid: number;
  /** The request's argument bytes (after the header); valid only until the read buffer is reused. */
  body: Buffer;
}

/** Parses a request header; undefined when the bytes cannot be a request. */
export function parseRequest(buf: Buffer, n: number): Request | undefined {
  if (n < IN_HEADER_SIZE) return undefined;
  const len = buf.readUInt32LE(0);
  if (len < IN_HEADER_SIZE || len > n) return undefined;
  const nodeid = buf.readBigUInt64LE(16);
  return {
    len,
    opcode: buf.readUInt32LE(4),
    unique: buf.readBigUInt64LE(8),
    // Node ids are ours and stay far below 2^53; the kernel sends other values only by mistake.
    nodeid: nodeid > BigInt(Number.MAX_SAFE_INTEGER) ? -1 : Number(nodeid),
    uid: buf.readUInt32LE(24),
    gid: buf.readUInt32LE(28),
    pid: buf.readUInt32LE(32),
    body: buf.subarray(IN_HEADER_SIZE, len),
  };
}

/** A NUL-terminated name at `offset` of a request body. */
export function cString(body: Buffer, offset = 0): string {
  const end = body.indexOf(0, offset);
  return body.toString('utf8', offset, end < 0 ? body.length : end);
}

export function writeOutHeader(b: Buffer, len: number, error: number, unique: bigint): void {
  b.writeUInt32LE(len, 0);
  b.writeInt32LE(error, 4);
  b.writeBigUInt64LE(unique, 8);
}

// ---- INIT ----

export interface InitIn {
  major: number;
  minor: number;
  maxReadahead: number;
  flags: number;
}

export function parseInitIn(body: Buffer): InitIn {
  return { major: body.readUInt32LE(0), minor: body.readUInt32LE(4), maxReadahead: body.readUInt32LE(8), flags: body.readUInt32LE(12) };
}

export interface InitOut {
  minor: number;
  maxReadahead: number;
  flags: number;
  maxBackground: number;
  congestionThreshold: number;
  maxWrite: number;
  maxPages: number;
}

/** struct fuse_init_out (64 bytes since 7.23; older kernels accept its first 24). */
export function encodeInitOut(o: InitOut): Buffer {
  const b = Buffer.alloc(o.minor >= 23 ? 64 : 24);
  b.writeUInt32LE(FUSE_KERNEL_VERSION, 0);
  b.writeUInt32LE(o.minor, 4);
  b.writeUInt32LE(o.maxReadahead, 8);
  b.writeUInt32LE(o.flags >>> 0, 12);
  b.writeUInt16LE(o.maxBackground, 16);
  b.writeUInt16LE(o.congestionThreshold, 18);
  b.writeUInt32LE(o.maxWrite, 20);
  if (b.length >= 64) {
    b.writeUInt32LE(1, 24); // time_gran: 1 ns; the times written (writeTime) are the view's Dates, ms-precise: ns digits below are 0
    b.writeUInt16LE(o.maxPages, 28);
  }
  return b;
}

// ---- attributes and entries ----

export const ATTR_SIZE = 88; // struct fuse_attr
export const ENTRY_OUT_SIZE = 40 + ATTR_SIZE; // struct fuse_entry_out
export const ATTR_OUT_SIZE = 16 + ATTR_SIZE; // struct fuse_attr_out

function writeTime(b: Buffer, secOff: number, nsecOff: number, d: Date): void {
  const ms = d.getTime();
  const sec = Math.floor(ms / 1000);
  b.writeBigInt64LE(BigInt(sec), secOff);
  b.writeUInt32LE(Math.round((ms - sec * 1000) * 1e6), nsecOff);
}

/** struct fuse_attr at `off` of b. */
export function writeAttr(b: Buffer, off: number, a: Attr): void {
  b.writeBigUInt64LE(BigInt(a.ino), off);
  b.writeBigUInt64LE(BigInt(a.size), off + 8);
  b.writeBigUInt64LE(BigInt(a.blocks), off + 16);
  writeTime(b, off + 24, off + 48, a.atime);
  writeTime(b, off + 32, off + 52, a.mtime);
  writeTime(b, off + 40, off + 56, a.ctime);
  b.writeUInt32LE(a.mode >>> 0, off + 60);
  b.writeUInt32LE(a.nlink >>> 0, off + 64);
  b.writeUInt32LE(a.uid >>> 0, off + 68);
  b.writeUInt32LE(a.gid >>> 0, off + 72);
  b.writeUInt32LE(a.rdev >>> 0, off + 76);
  b.writeUInt32LE(a.blksize >>> 0, off + 80);
  b.writeUInt32LE(0, off + 84);
}

/** Validity in the protocol's (seconds, nanoseconds) form. */
function writeValid(b: Buffer, secOff: number, nsecOff: number, seconds: number): void {
  const s = Math.floor(seconds);
  b.writeBigUInt64LE(BigInt(s), secOff);
  b.writeUInt32LE(Math.round((seconds - s) * 1e9), nsecOff);
}

/** struct fuse_entry_out; nodeid 0 with no attr is a negative entry the kernel caches for entryValid. */
export function encodeEntryOut(nodeid: number, generation: number, entryValid: number, attrValid: number, attr?: Attr): Buffer {
  const b = Buffer.alloc(ENTRY_OUT_SIZE);
  writeEntryOut(b, 0, nodeid, generation, entryValid, attrValid, attr);
  return b;
}

export function writeEntryOut(b: Buffer, off: number, nodeid: number, generation: number, entryValid: number, attrValid: number, attr?: Attr): void {
  b.writeBigUInt64LE(BigInt(nodeid), off);
  b.writeBigUInt64LE(BigInt(generation), off + 8);
  writeValid(b, off + 16, off + 32, entryValid);
  writeValid(b, off + 24, off + 36, attrValid);
  if (attr) writeAttr(b, off + 40, attr);
}

export function encodeAttrOut(attrValid: number, attr: Attr): Buffer {
  const b = Buffer.alloc(ATTR_OUT_SIZE);
  writeValid(b, 0, 8, attrValid);
  writeAttr(b, 16, attr);
  return b;
}

// ---- directories ----

const DIRENT_HEADER = 24; // struct fuse_dirent before the name
export const DT_UNKNOWN = 0;
/** d_ino for entries whose inode we do not know without a stat (libfuse uses the same value). */
export const FUSE_UNKNOWN_INO = 0xffffffff;

export function direntSize(nameBytes: number): number {
  return (DIRENT_HEADER + nameBytes + 7) & ~7; // FUSE_DIRENT_ALIGN
}

/** struct fuse_dirent at `off`; `next` is the offset the kernel sends back to continue after it. */
export function writeDirent(b: Buffer, off: number, ino: number, next: number, type: number, name: Buffer): number {
  const size = direntSize(name.length);
  b.writeBigUInt64LE(BigInt(ino), off);
  b.writeBigUInt64LE(BigInt(next), off + 8);
  b.writeUInt32LE(name.length, off + 16);
  b.writeUInt32LE(type, off + 20);
  name.copy(b, off + DIRENT_HEADER);
  b.fill(0, off + DIRENT_HEADER + name.length, off + size);
  return size;
}

// ---- other replies ----

/** struct fuse_statfs_out (struct fuse_kstatfs, 80 bytes). */
export function encodeStatfsOut(s: FsStats): Buffer {
  const b = Buffer.alloc(80);
  b.writeBigUInt64LE(BigInt(s.blocks), 0);
  b.writeBigUInt64LE(BigInt(s.bfree), 8);
  b.writeBigUInt64LE(BigInt(s.bavail), 16);
  b.writeBigUInt64LE(BigInt(s.files), 24);
  b.writeBigUInt64LE(BigInt(s.ffree), 32);
  b.writeUInt32LE(s.bsize >>> 0, 40);
  b.writeUInt32LE(s.namemax >>> 0, 44);
  b.writeUInt32LE(s.frsize >>> 0, 48);
  return b;
}

/** struct fuse_getxattr_out: the size a getxattr/listxattr probe (size 0) asked for. */
export function encodeXattrSize(size: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(size, 0);
  return b;
}

/** struct fuse_open_out */
export function encodeOpenOut(fh: number, openFlags: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(BigInt(fh), 0);
  b.writeUInt32LE(openFlags, 8);
  return b;
}

// ---- requests' arguments ----

/** struct fuse_read_in (READ and READDIR) */
export interface ReadIn {
  fh: number;
  offset: number;
  size: number;
}

export function parseReadIn(body: Buffer): ReadIn {
  return { fh: Number(body.readBigUInt64LE(0)), offset: Number(body.readBigUInt64LE(8)), size: body.readUInt32LE(16) };
}

/** fuse_batch_forget_in + fuse_forget_one[] */
export function parseBatchForget(body: Buffer): Array<[number, number]> {
  const count = body.readUInt32LE(0);
  const out: Array<[number, number]> = [];
  for (let i = 0; i < count && 8 + i * 16 + 16 <= body.length; i++) {
    out.push([Number(body.readBigUInt64LE(8 + i * 16)), Number(body.readBigUInt64LE(16 + i * 16))]);
  }
  return out;
}

// ---- notifications ----

/** FUSE_NOTIFY_INVAL_INODE: drop the node's attributes and its cached pages from offset 0 (len 0 = to the end). */
export function encodeInvalInode(nodeid: number): Buffer {
  const b = Buffer.alloc(OUT_HEADER_SIZE + 24);
  writeOutHeader(b, b.length, FUSE_NOTIFY_INVAL_INODE, 0n);
  b.writeBigUInt64LE(BigInt(nodeid), 16);
  b.writeBigInt64LE(0n, 24);
  b.writeBigInt64LE(0n, 32);
  return b;
}

/** FUSE_NOTIFY_INVAL_ENTRY: drop the dentry (positive or negative) of `name` in directory `parent`. */
export function encodeInvalEntry(parent: number, name: string): Buffer {
  const nameBytes = Buffer.from(name);
  const b = Buffer.alloc(OUT_HEADER_SIZE + 16 + nameBytes.length + 1);
  writeOutHeader(b, b.length, FUSE_NOTIFY_INVAL_ENTRY, 0n);
  b.writeBigUInt64LE(BigInt(parent), 16);
  b.writeUInt32LE(nameBytes.length, 24);
  b.writeUInt32LE(0, 28);
  nameBytes.copy(b, 32);
  return b;
}
