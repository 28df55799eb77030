/**
 * The randomization daemon (`fscache daemon`, foreground): answers the hook on
 * R/run/fscache/hook.sock.
 *
 * Protocol (one request per connection, text, newline-terminated, at most 8 KiB):
 *   hook -> daemon   "Q <dev> <ino> <size> <mtime_ns> <path relative to R, starting with />\n"   (decimal)
 *   daemon -> hook   "OK\n"            the current epoch's image of that file exists now
 *                    "PASS <reason>\n" refused; the original loads
 *                    "ERR <reason>\n"  bad request or failure; the original loads
 * The hook with on_miss=original closes right after sending: the image is still made.
 *
 * Single flight: one job per library identity and name however many ask; jobs run one at a time on this thread
 * (randomization is CPU work and the machine is small), requests for a key already being
 * made wait for that job. The socket is 0666: asking for an image of a world-readable,
 * root-owned library discloses nothing and the daemon decides everything on its own descriptor.
 * Every refusal goes to a bounded record (refusals.ts) that `fscache images` shows; what is kept
 * per request claim (jobs waiting, refusals remembered) is bounded too, since anyone may claim anything.
 * Time is bounded per connection from accept (REQUEST_DEADLINE_MS for the request line, then
 * ANSWER_DEADLINE_MS), and connections still sending their line are capped, the oldest dropped:
 * slow clients push out each other, never a hook's request. Connections open at once are capped
 * per uid (MAX_PER_UID, where the native addon tells the peer's uid) and in all (MAX_CONNECTIONS).
 */
import * as fs from 'fs';
import * as net from 'net';
import * as path from 'path';
import type { Config } from '../core/config';
import type { Logger } from '../core/log';
import { native } from '../core/native';
import type { Paths } from '../core/paths';
import { readTextOr } from '../core/write-atomic';
import { IDLE_MARK } from './control';
import { hookPaths } from './hook-paths';
import { HookFailure, ImageStore, MakeResult, writeAtomic } from './images';
import { directoriesForAuditor } from './served-images';
import { RefusalLog } from './refusals';

const MAX_REQUEST = 8192;
/** From accept to the request's newline: the hook writes its line at once, a slow client is cut off here. */
const REQUEST_DEADLINE_MS = 3_000;
/** From accept to the answer, whatever the client sends: a waiting hook gives up long before (miss_wait_ms). */
const ANSWER_DEADLINE_MS = 120_000;
/**
 * Connections still sending their request line, at most this many: a new one drops the oldest of
 * them. Since a hook sends its line as soon as it connects, it leaves this set within microseconds,
 * and a crowd of slow clients can only push out each other, never keep a new request from being read.
 */
const MAX_READING = 128;
/**
 * Connections open at once per uid other than root's (the peer's uid from SO_PEERCRED): one user's
 * crowd cannot take the descriptors everyone shares (MAX_CONNECTIONS); beyond it their hooks load
 * originals. Node has no SO_PEERCRED: the uid comes from the native addon's peerUid.
 */
const MAX_PER_UID = 64;
/** Descriptors at all (reading or waiting for a job), a bound on what anyone can make us hold. */
const MAX_CONNECTIONS = 4096;
const GC_INTERVAL_MS = 30_000;
/** Jobs waiting at once (distinct identities): beyond it a request is answered ERR busy at once. */
const MAX_JOBS = 1024;
/** Policy refusals answered from memory: at most this many identities, each for REFUSED_TTL_MS. */
const MAX_REFUSED_REMEMBERED = 1024;
const REFUSED_TTL_MS = 60_000;

/** The uid of the process at the other end of `c`, or undefined when it cannot be known. */
function peerUid(c: net.Socket): number | undefined {
  const fd = (c as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (fd === undefined || fd < 0) return undefined;
  try {
    return native.peerUid(fd);
  } catch {
    return undefined;
  }
}

export interface Request { dev: bigint; ino: bigint; size: bigint; mtimeNs: bigint; path: string }

/** Parses one request line; undefined for anything malformed (answered ERR). */
export function parseRequest(line: string): Request | undefined {
  const m = /^Q (\d{1,20}) (\d{1,20}) (\d{1,20}) (\d{1,20}) (\/[^\0\n]{0,4095})$/.exec(line);
  if (!m) return undefined;
  return { dev: BigInt(m[1]), ino: BigInt(m[2]), size: BigInt(m[3]), mtimeNs: BigInt(m[4]), path: m[5] };
}

export class HookDaemon {
  private server?: net.Server;
  private readonly inflight = new Map<string, Promise<MakeResult>>();
  private queue: Promise<unknown> = Promise.resolve();
  private gcTimer?: NodeJS.Timeout;
  /** Policy refusals answered from memory for a while, so a refused library costs no re-check per launch. */
  private readonly refusedRecently = new Map<string, { reason: string; library?: string; until: number }>();
  /** Connections that have not sent their request line yet, oldest first (insertion order). */
  private readonly reading = new Set<net.Socket>();
  /** Open connections per non-root uid. */
  private readonly perUid = new Map<number, number>();
  /** Connections open now, and when the last one closed or job ended (Date.now()). */
  private open = 0;
  private lastActive = Date.now();
  readonly store: ImageStore;
  readonly refusals: RefusalLog;

  constructor(readonly paths: Paths, readonly config: Config, readonly log: Logger) {
    this.store = new ImageStore(paths, config, log);
    this.refusals = new RefusalLog(this.store.hp.refusalsFile, log);
  }

  async listen(): Promise<void> {
    this.store.ensureEpoch();
    const sock = this.store.hp.socket;
    fs.rmSync(sock, { force: true }); // a stale socket from a crashed daemon
    this.server = net.createServer((c) => this.onConnection(c));
    // Anyone may connect: bound the descriptors all clients together can hold (beyond it the hook loads
    // originals); slow ones are bounded per connection in onConnection.
    this.server.maxConnections = MAX_CONNECTIONS;
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(sock, () => resolve());
    });
    fs.chmodSync(sock, 0o666);
    this.gcTimer = setInterval(() => this.housekeeping(), GC_INTERVAL_MS);
    this.gcTimer.unref();
    this.log.info(`hook daemon listening on ${sock}`);
  }

  async close(): Promise<void> {
    if (this.gcTimer) clearInterval(this.gcTimer);
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    fs.rmSync(this.store.hp.socket, { force: true });
    await this.queue.catch(() => undefined);
    this.refusals.flush();
    this.store.close();
  }

  private housekeeping(): void {
    try {
      this.store.gcEpochs();
      this.store.evict();
    } catch (e) {
      this.log.warn(`hook: housekeeping failed: ${(e as Error).message}`);
    }
  }

  /** Milliseconds since the last request ended, 0 while one is open or a job waits. */
  idleFor(): number {
    return this.open > 0 || this.inflight.size > 0 ? 0 : Date.now() - this.lastActive;
  }

  private onConnection(c: net.Socket): void {
    this.open++;
    c.once('close', () => {
      this.open--;
      this.lastActive = Date.now();
    });
    let buf = '';
    let done = false;
    const uid = peerUid(c);
    if (uid !== undefined && uid !== 0) {
      const n = (this.perUid.get(uid) ?? 0) + 1;
      // Refused at once, nothing read: that user's hooks load originals (fail open) until theirs close.
      if (n > MAX_PER_UID) return void c.destroy();
      this.perUid.set(uid, n);
      c.once('close', () => {
        const left = (this.perUid.get(uid) ?? 1) - 1;
        if (left > 0) this.perUid.set(uid, left);
        else this.perUid.delete(uid);
      });
    }
    // Deadlines from accept, not idle timeouts: a byte now and then must not keep a connection open.
    this.reading.add(c);
    if (this.reading.size > MAX_READING) {
      const oldest = this.reading.values().next().value as net.Socket;
      this.reading.delete(oldest);
      oldest.destroy();
    }
    const readDeadline = setTimeout(() => c.destroy(), REQUEST_DEADLINE_MS);
    const answerDeadline = setTimeout(() => c.destroy(), ANSWER_DEADLINE_MS);
    const stopReading = () => {
      this.reading.delete(c);
      clearTimeout(readDeadline);
    };
    c.on('close', () => {
      stopReading();
      clearTimeout(answerDeadline);
    });
    c.on('error', () => undefined); // the hook may have hung up (on_miss=original, or it timed out)
    const reply = (s: string) => {
      stopReading();
      if (done) return;
      done = true;
      if (!c.destroyed) c.end(s);
    };
    c.on('data', (d) => {
      if (done) return;
      buf += d.toString('latin1');
      const nl = buf.indexOf('\n');
      if (nl < 0) {
        if (buf.length > MAX_REQUEST) reply('ERR request too long\n');
        return;
      }
      stopReading(); // the line is in: now only the answer deadline holds
      const req = parseRequest(buf.slice(0, nl));
      if (!req) return reply('ERR bad request\n');
      this.request(req).then(
        // The requester learns only yes or no: details of why go to the log and `fscache images`.
        (r) => reply(r.kind === 'image' ? 'OK\n' : r.kind === 'pass' ? 'PASS refused by the randomizer\n' : 'PASS not eligible\n'),
        (e) => {
          if (e instanceof Busy) return reply('ERR busy\n');
          this.log.warn(`hook: ${req.path}: ${(e as Error).message}`);
          this.recordFailure(path.join(this.paths.root, req.path), (e as Error).message);
          this.refusals.record(path.join(this.paths.root, req.path), `failed: ${(e as Error).message}`);
          reply(`ERR ${String((e as Error).message).replace(/\n/g, ' ')}\n`);
        },
      );
    });
  }

  /** The last failures (a full images directory, an unwritable index...), for `fscache images`. */
  private recordFailure(source: string, message: string): void {
    const file = this.store.hp.failuresFile;
    let list: HookFailure[] = [];
    try {
      list = JSON.parse(fs.readFileSync(file, 'utf8')) as HookFailure[];
    } catch {
      // none yet, or unreadable: start again
    }
    list = [{ at: Date.now(), source, message }, ...list.filter((f) => f.source !== source)].slice(0, 20);
    try {
      // 0600: it names files that may be unreadable to others (whatever anyone asked about).
      writeAtomic(file, JSON.stringify(list, null, 2) + '\n', 0o600);
    } catch {
      // the log line above still says it
    }
  }

  /** Single flight per identity and name: concurrent requests for one file share one job. Every "no" is recorded. */
  request(req: Request): Promise<MakeResult> {
    return this.decide(req).then((r) => {
      if (r.kind !== 'image') this.refusals.record(r.library ?? path.join(this.paths.root, req.path), r.reason);
      return r;
    });
  }

  private decide(req: Request): Promise<MakeResult> {
    // Identity and name: a client claiming a library's identity under a name that does not lead to
    // it must not make the hook's own request for that library share its refusal.
    const id = `${req.dev}-${req.ino}-${req.size}-${req.mtimeNs} ${req.path}`;
    const cached = this.refusedRecently.get(id);
    if (cached && cached.until > Date.now()) return Promise.resolve({ kind: 'refused', reason: cached.reason, library: cached.library });
    const running = this.inflight.get(id);
    if (running) return running;
    if (this.inflight.size >= MAX_JOBS) return Promise.reject(new Busy());
    const job = this.queue.then(() => new Promise<MakeResult>((resolve, reject) => {
      // setImmediate: let the sockets that arrived meanwhile join this job before it blocks the loop.
      setImmediate(() => {
        try {
          // The hook names files as seen from R (it may run in a chroot of R).
          resolve(this.store.makeImage(path.join(this.paths.root, req.path), { dev: req.dev, ino: req.ino, size: req.size, mtimeNs: req.mtimeNs }));
        } catch (e) {
          reject(e);
        }
      });
    }));
    this.queue = job.catch(() => undefined);
    this.inflight.set(id, job);
    const clear = () => this.inflight.delete(id);
    job.then((r) => {
      clear();
      if (r.kind !== 'refused') return;
      this.refusedRecently.delete(id);
      this.refusedRecently.set(id, { reason: r.reason, library: r.library, until: Date.now() + REFUSED_TTL_MS });
      // Oldest first out: keys are identities a client claimed.
      if (this.refusedRecently.size > MAX_REFUSED_REMEMBERED) this.refusedRecently.delete(this.refusedRecently.keys().next().value as string);
    }, clear);
    return job;
  }
}

/** Too many jobs waiting: answered at once, neither recorded nor logged (a flood must not fill either). */
class Busy extends Error {}

/**
 * `fscache daemon`: runs until SIGTERM/SIGINT, or, when only the view asks for images (no LD_AUDIT
 * needed, see served-images.ts), until daemon_idle_seconds pass without a request: its pid file then
 * says so, and the view has the supervisor start it again at its next miss.
 */
export async function runDaemon(paths: Paths, config: Config, log: Logger): Promise<void> {
  const d = new HookDaemon(paths, config, log);
  await d.listen();
  const idleMs = directoriesForAuditor(paths, config).length === 0 ? config.daemonIdleSeconds * 1000 : 0;
  const why = await new Promise<string>((resolve) => {
    const stop = () => resolve('stopped');
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
    if (idleMs > 0) setInterval(() => d.idleFor() >= idleMs && resolve('idle'), Math.min(idleMs, 5000)).unref();
  });
  await d.close();
  if (why === 'idle') {
    const pidFile = hookPaths(paths).pidFile;
    // Only our own pid file: a stop that removed it meanwhile must not be undone.
    if (readTextOr(pidFile)?.trim() === String(process.pid)) writeAtomic(pidFile, `${IDLE_MARK}\n`, 0o644);
    log.info(`hook daemon exiting after ${idleMs / 1000} s without a request; started again at the view's next miss`);
  } else {
    log.info('hook daemon stopped');
  }
}
