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
 */
import * as fs from 'fs';
import * as net from 'net';
import * as path from 'path';
import type { Config } from '../fs/config';
import type { Logger } from '../fs/log';
import type { Paths } from '../fs/paths';
import { HookFailure, ImageStore, MakeResult } from './images';
import { RefusalLog } from './refusals';

const MAX_REQUEST = 8192;
const CONN_TIMEOUT_MS = 30_000;
const MAX_CONNECTIONS = 256;
const GC_INTERVAL_MS = 30_000;
/** Jobs waiting at once (distinct identities): beyond it a request is answered ERR busy at once. */
const MAX_JOBS = 1024;
/** Policy refusals answered from memory: at most this many identities, each for REFUSED_TTL_MS. */
const MAX_REFUSED_REMEMBERED = 1024;
const REFUSED_TTL_MS = 60_000;

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
    // Anyone may connect: bound the descriptors idle or slow clients can hold (the hook then loads originals).
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

  private onConnection(c: net.Socket): void {
    let buf = '';
    let done = false;
    c.setTimeout(CONN_TIMEOUT_MS, () => c.destroy());
    c.on('error', () => undefined); // the hook may have hung up (on_miss=original, or it timed out)
    const reply = (s: string) => {
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
      fs.writeFileSync(file, JSON.stringify(list, null, 2) + '\n', { mode: 0o644 });
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

/** `fscache daemon`: runs until SIGTERM/SIGINT. */
export async function runDaemon(paths: Paths, config: Config, log: Logger): Promise<void> {
  const d = new HookDaemon(paths, config, log);
  await d.listen();
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  await d.close();
  log.info('hook daemon stopped');
}
