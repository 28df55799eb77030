/**
 * Reads the kernel's FUSE requests on a thread of its own, blocked in read(2) on /dev/fuse.
 *
 * Why a thread: a warm launch through the kernel session still sends two kinds of
 * request, and the kernel never remembers their answers: Python's isatty() (IOCTL TCGETS)
 * on every file it opens, and the exec's GETXATTR of security.capability. Read on libuv's
 * threadpool, each woke a pool thread and then the main thread before it was answered;
 * this thread answers them itself (IOCTL: ENOTTY, what a regular file answers; GETXATTR:
 * ENODATA while the main thread vouches that the file has no capability), one thread
 * wake-up fewer (bench/RESULTS.md). Every other request goes to the main thread
 * unchanged, in the order read.
 *
 * Why the exit hook: Node joins worker threads at exit, and a thread blocked in read(2)
 * only returns when a request comes. On an exit with the connection still up (a crash,
 * process.exit) the hook asks the thread to stop and sends it one request (a LOOKUP of a
 * name nobody has); if that cannot reach it, the process kills itself rather than hang:
 * a view that hangs would hang every launch under /usr, a dead one only fails them.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { IN_HEADER_SIZE, Op, OUT_HEADER_SIZE } from './fuse-protocol';

const E = os.constants.errno;

/** Slots of the state shared with the thread. */
const IOCTLS = 0; // IOCTLs the thread answered
const GETXATTRS = 1; // GETXATTRs the thread answered
const STOP = 2; // set by the exit hook: answer the next request with an error and end
const ENDED = 3; // set by the thread when it leaves its loop
const STATE_SLOTS = 4;
/**
 * Nodes known to have no security.capability, direct-mapped by node id: slot i holds a
 * node id and, in a second array, the second (since `base`) until which that holds. The
 * main thread writes until=0, then the id, then until; the thread re-reads until after the
 * id, so it never pairs one node's id with another's time.
 */
const NO_CAP_SLOTS = 4096;

/**
 * The thread's code (plain JavaScript, so it runs the same from dist/ and under ts-jest); the
 * protocol's numbers are filled in from fuse-protocol.ts and this system's errno values.
 */
const THREAD_SOURCE = `
const fs = require('fs');
const { parentPort, workerData } = require('worker_threads');
const { fd, size, shared, noCapIds, noCapUntil, base } = workerData;
const state = new Int32Array(shared);
const ids = new Int32Array(noCapIds);
const until = new Int32Array(noCapUntil);
const buf = Buffer.allocUnsafe(size);
const reply = Buffer.alloc(${OUT_HEADER_SIZE});
const CAPABILITY = Buffer.from('security.capability\0');
const NAME_AT = ${IN_HEADER_SIZE} + 8; // struct fuse_in_header, fuse_getxattr_in, then the name
function noCapability(n) {
  if (n !== NAME_AT + CAPABILITY.length || buf.compare(CAPABILITY, 0, CAPABILITY.length, NAME_AT, n) !== 0) return false;
  const id = Number(buf.readBigUInt64LE(16));
  const i = id & ${NO_CAP_SLOTS - 1};
  const t = Atomics.load(until, i);
  return Atomics.load(ids, i) === id && Atomics.load(until, i) === t && (Date.now() - base) / 1000 < t;
}
function answer(errno) {
  reply.writeUInt32LE(${OUT_HEADER_SIZE}, 0);
  reply.writeInt32LE(-errno, 4);
  buf.copy(reply, 8, 8, 16); // the request's unique id
  try { fs.writeSync(fd, reply); } catch {} // ENOENT: interrupted meanwhile
}
for (;;) {
  let n;
  try {
    n = fs.readSync(fd, buf, 0, size, null);
  } catch (err) {
    const code = err.code;
    if (code === 'EINTR' || code === 'EAGAIN' || code === 'ENOENT') continue; // ENOENT: interrupted before read
    if (code === 'ENODEV' || code === 'ECONNABORTED' || code === 'EBADF' || code === 'EPERM') {
      parentPort.postMessage({ ended: code });
      break;
    }
    parentPort.postMessage({ warning: code });
    Atomics.wait(state, ${STOP}, 0, 10); // no hot loop on a persistent error
    continue;
  }
  if (Atomics.load(state, ${STOP})) {
    answer(${E.ENOENT});
    break;
  }
  const opcode = n >= ${IN_HEADER_SIZE} ? buf.readUInt32LE(4) : -1;
  if (opcode === ${Op.IOCTL}) {
    answer(${E.ENOTTY});
    Atomics.add(state, ${IOCTLS}, 1);
    continue;
  }
  if (opcode === ${Op.GETXATTR} && noCapability(n)) {
    answer(${E.ENODATA});
    Atomics.add(state, ${GETXATTRS}, 1);
    continue;
  }
  const request = new Uint8Array(n);
  request.set(buf.subarray(0, n));
  parentPort.postMessage(request, [request.buffer]);
}
Atomics.store(state, ${ENDED}, 1);
Atomics.notify(state, ${ENDED});
`;

export interface FuseReaderEvents {
  /** One request, in the order the kernel queued it; the buffer is the caller's to keep. */
  request(buf: Buffer): void;
  /** The connection is gone (ENODEV after the last user of a detached mount) or unusable. */
  ended(code: string): void;
  warning(code: string): void;
}

export class FuseReader {
  private readonly shared = new SharedArrayBuffer(STATE_SLOTS * 4);
  private readonly state = new Int32Array(this.shared);
  private readonly noCapIds = new Int32Array(new SharedArrayBuffer(NO_CAP_SLOTS * 4));
  private readonly noCapUntil = new Int32Array(new SharedArrayBuffer(NO_CAP_SLOTS * 4));
  private readonly base = Date.now();
  private readonly thread: Worker;
  private readonly onExit = () => this.stopForExit();

  constructor(
    private readonly fd: number,
    bufferSize: number,
    private readonly mountpoint: string,
    events: FuseReaderEvents,
  ) {
    // The thread's heap holds one request at a time.
    this.thread = new Worker(THREAD_SOURCE, {
      eval: true,
      workerData: {
        fd, size: bufferSize, shared: this.shared, base: this.base,
        noCapIds: this.noCapIds.buffer, noCapUntil: this.noCapUntil.buffer,
      },
      resourceLimits: { maxOldGenerationSizeMb: 16, maxYoungGenerationSizeMb: 4 },
    });
    this.thread.unref();
    this.thread.on('message', (m: Uint8Array | { ended?: string; warning?: string }) => {
      if (m instanceof Uint8Array) return events.request(Buffer.from(m.buffer, m.byteOffset, m.byteLength));
      if (m.warning) return events.warning(m.warning);
      if (m.ended) {
        process.off('exit', this.onExit);
        events.ended(m.ended);
      }
    });
    this.thread.on('error', (err) => {
      process.off('exit', this.onExit);
      events.ended(`reader thread failed: ${err.message}`);
    });
    process.on('exit', this.onExit);
  }

  /** Requests the thread answered without the main thread, by opcode name. */
  answered(): { ioctl: number; getxattr: number } {
    return { ioctl: Atomics.load(this.state, IOCTLS), getxattr: Atomics.load(this.state, GETXATTRS) };
  }

  /** The node has no security.capability for `seconds` from now (unless forgotten sooner). */
  vouchNoCapability(nodeId: number, seconds: number): void {
    const until = Math.floor((Date.now() - this.base) / 1000 + seconds); // rounded down: expires early, never late
    if (nodeId > 0x7fffffff || until > 0x7fffffff || seconds <= 0) return;
    const i = nodeId & (NO_CAP_SLOTS - 1);
    Atomics.store(this.noCapUntil, i, 0);
    Atomics.store(this.noCapIds, i, nodeId);
    Atomics.store(this.noCapUntil, i, until);
  }

  /** Its xattrs may have changed: the main thread answers again. */
  forgetCapability(nodeId: number): void {
    const i = nodeId & (NO_CAP_SLOTS - 1);
    if (Atomics.load(this.noCapIds, i) === nodeId) Atomics.store(this.noCapUntil, i, 0);
  }

  private stopForExit(): void {
    if (Atomics.load(this.state, ENDED)) return;
    Atomics.store(this.state, STOP, 1);
    try {
      // A name never looked up: the kernel cannot answer it from its cache.
      fs.statSync(path.join(this.mountpoint, `.fscache-exit-${process.pid}-${process.hrtime.bigint()}`));
    } catch {
      // ENOENT from the thread, or the mount is no longer at its path
    }
    if (Atomics.wait(this.state, ENDED, 0, 1000) === 'timed-out') {
      process.stderr.write(`fscache: the FUSE reader of ${this.mountpoint} did not stop; ending the process (fd ${this.fd})\n`);
      process.kill(process.pid, 'SIGKILL');
    }
  }
}
