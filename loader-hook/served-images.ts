/**
 * Randomized images served under the libraries' own names (issue 16): the view answers a library's
 * path with the current epoch's image of it, so every process that loads it through the view maps
 * the same randomized bytes: no auditor, no environment, setuid programs included.
 *
 * What is served (decided on the real file's attributes, read from the object the view looked up):
 * a regular file under a configured library directory, named like a shared object, owned by root,
 * readable by all and writable by no one else: exactly what the daemon would randomize. Its image
 * is R/fscache/images/<epoch>/<key>.so, used only when it is a root-owned regular file sealed by
 * the daemon (mtime = size in seconds: a truncated image is never served). The image carries its
 * own device and inode, so the kernel session gives it a node of its own: a process keeps the
 * pages of the image (or original) it mapped when the name moves on to another one.
 *
 * A miss serves the original and asks the daemon in the background (the hook's protocol, the
 * real tree's path); when the daemon says the image is there, `changed.path` makes the kernel
 * drop the name, and the next launch gets the image (fail open: no daemon, no image, the original).
 * An epoch change (R/run/fscache/epoch renamed over) forgets every answer and makes the kernel
 * drop every name answered in the old epoch (`changed.path`), image or original.
 *
 * Trust: the epoch file and the images are root's (the daemon's); anything else in their place is
 * ignored and the originals are served.
 */
import * as fs from 'fs';
import * as net from 'net';
import * as path from 'path';
import type { Config } from '../core/config';
import { identityOf } from '../core/identity';
import type { Logger } from '../core/log';
import type { Paths } from '../core/paths';
import { requestDaemon } from '../fs/service/orphan-watch';
import { HookPaths, hookPaths, keyOf } from './hook-paths';
import { realTreePathOrUndefined } from './real-path';

/** A library name: lib*.so, *.so.N..., and Python's or Perl's extension modules (*.so). */
const LIBRARY_NAME = /\.so(\.[0-9][0-9.]*)?$/;
/** Requests to the daemon in flight at once; a miss beyond it is asked at a later lookup. */
const MAX_ASKING = 16;
/**
 * Images held open at once (this epoch's and the previous one's): beyond it images are not served
 * (the original is), so that held images never take the descriptors the view's nodes need.
 */
const MAX_HELD = 512;
/** A library asked about is not asked again for this long (the daemon down, or still making it). */
const ASK_AGAIN_MS = 10_000;

export interface ServedChange {
  /** The image of the library at view path `p` is ready: the kernel should forget that name. */
  path(p: string): void;
  /** A new epoch (after `path` for every name answered in the last one). */
  epoch(): void;
}

/**
 * Where a library directory (relative to R) lies on the real tree's side of the link: resolved when
 * it exists, else by its name when that is under R/usr (made by a package later; the daemon resolves
 * again anyway); undefined for one not there that would lie elsewhere.
 */
function realSideOf(paths: Paths, dir: string): string | undefined {
  const usr = path.relative(paths.root, paths.usrLink) + '/';
  return realTreePathOrUndefined(paths, '/' + dir) ?? ((dir + '/').startsWith(usr) ? path.join(paths.realTree, dir.slice(usr.length)) : undefined);
}

const insideTree = (paths: Paths, real: string | undefined): real is string => !!real && (real + '/').startsWith(paths.realTree + '/');

/**
 * The library directories that images served by the view do not cover (outside the real tree, or
 * every one when the view does not serve them): LD_AUDIT is set for new processes only if there are any.
 */
export function directoriesForAuditor(paths: Paths, config: Config): string[] {
  // Served under the libraries' names by the view, or written into the mirror (loader-hook/mirror-images.ts).
  if (config.serveImages !== 'on') return config.libraryDirs;
  return config.libraryDirs.filter((d) => !insideTree(paths, realSideOf(paths, d)));
}

export class ServedImages {
  private readonly hp: HookPaths;
  private epoch?: string;
  /** key → the image's attributes, or null for a library the daemon passes through (marker). */
  private readonly known = new Map<string, fs.BigIntStats | null>();
  /**
   * Images answered, by their dev:ino, each held open (this epoch's and the previous one's): a node
   * answered as an image reads it through this descriptor even after the daemon evicted it or
   * removed its epoch, and while it is held its inode number cannot name another file.
   */
  private readonly byObject = new Map<string, { fd: number; epoch: string }>();
  private readonly asked = new Map<string, number>();
  /** View paths answered in this epoch (as an image, or as the original while asked about). */
  private readonly answered = new Set<string>();
  private asking = 0;
  private daemonAskedAt = 0;
  private epochWatch?: fs.FSWatcher;
  private readonly viewDirs: string[];
  /** Counters for the state file. */
  readonly counters = { served: 0, asked: 0 };

  constructor(private readonly paths: Paths, config: Config, private readonly log: Logger, private readonly changed: ServedChange) {
    this.hp = hookPaths(paths);
    // The library directories as view paths ('/lib/'): those on the real tree's side of the link.
    this.viewDirs = config.libraryDirs
      .map((d) => realSideOf(paths, d))
      .filter((d): d is string => insideTree(paths, d))
      .map((d) => d.slice(paths.realTree.length) + '/');
  }

  start(): void {
    this.readEpoch();
    try {
      // The daemon renames the epoch file over: a watch on its directory sees every new epoch.
      this.epochWatch = fs.watch(path.dirname(this.hp.epochFile), (_event, name) => {
        if (name === path.basename(this.hp.epochFile)) this.readEpoch();
      });
      this.epochWatch.on('error', () => undefined);
    } catch (e) {
      this.log.warn(`served images: cannot watch ${this.hp.epochFile} (${(e as Error).message}); a new epoch reaches the view at its next start`);
    }
  }

  stop(): void {
    this.epochWatch?.close();
    for (const h of this.byObject.values()) fs.closeSync(h.fd);
    this.byObject.clear();
  }

  get currentEpoch(): string | undefined {
    return this.epoch;
  }

  private readEpoch(): void {
    let epoch: string | undefined;
    try {
      const fd = fs.openSync(this.hp.epochFile, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
      try {
        const st = fs.fstatSync(fd);
        // Root's, written by the daemon: another user's file in its place names no images of ours.
        if (st.isFile() && st.uid === 0 && (st.mode & 0o022) === 0) epoch = fs.readFileSync(fd, 'utf8').split(' ')[0];
      } finally {
        fs.closeSync(fd);
      }
    } catch {
      // no hook running: originals
    }
    if (epoch !== undefined && !/^[0-9]{1,12}$/.test(epoch)) epoch = undefined;
    if (epoch === this.epoch) return;
    const had = this.epoch !== undefined;
    const previous = this.epoch;
    this.epoch = epoch;
    this.releaseOldEpochs(previous);
    this.known.clear();
    this.asked.clear();
    const answered = [...this.answered];
    this.answered.clear();
    if (epoch) this.log.info(`served images: epoch ${epoch}`);
    for (const p of answered) this.changed.path(p);
    // The first epoch a view sees changes nothing it answered (originals until then).
    if (had) this.changed.epoch();
  }

  /** Whether the view path names something that may be served randomized (by name only). */
  private candidate(p: string): boolean {
    return LIBRARY_NAME.test(p) && this.viewDirs.some((d) => p.startsWith(d));
  }

  /**
   * The attributes of the image to serve for the real file `st` at view path `p`, when the current
   * epoch has one; undefined serves the original (and, on a miss, asks for the image).
   */
  imageFor(p: string, st: fs.BigIntStats): fs.BigIntStats | undefined {
    if (!this.epoch || !st.isFile() || !this.candidate(p)) return undefined;
    // What the daemon would refuse is not asked about: only files anyone may read and only root may change.
    if (st.uid !== 0n || (st.mode & 0o004n) === 0n || (st.mode & 0o022n) !== 0n) return undefined;
    const key = keyOf(identityOf(st));
    this.answered.add(p);
    const dir = path.join(this.hp.images, this.epoch);
    const image = path.join(dir, `${key}.so`);
    const known = this.known.get(key);
    if (known === null) return undefined;
    // Checked again at each answer (one lstat): the daemon evicts images beyond images_max_*, and a
    // name answered as a removed image could only be EIO.
    const found = sealedImage(image);
    if (known && found && found.ino === known.ino && found.dev === known.dev) return known;
    const held = found && this.hold(image, found);
    if (held) {
      this.known.set(key, held);
      return held;
    }
    if (fs.existsSync(path.join(dir, `${key}.pass`))) {
      this.known.set(key, null);
      return undefined;
    }
    this.ask(key, p, st);
    return undefined;
  }

  /**
   * Opens `image` (lstat `seen`) and keeps it open; its attributes from that descriptor (decided on
   * the object opened), or undefined when it is not the sealed root-owned file seen, or the budget of
   * held images is spent (the original is served then: fail open).
   */
  private hold(image: string, seen: fs.BigIntStats): fs.BigIntStats | undefined {
    if (this.byObject.size >= MAX_HELD) return undefined;
    let fd: number | undefined;
    try {
      fd = fs.openSync(image, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
      const st = fs.fstatSync(fd, { bigint: true });
      if (st.dev === seen.dev && st.ino === seen.ino && sealed(st)) {
        this.byObject.set(`${st.dev}:${st.ino}`, { fd, epoch: this.epoch! });
        return st;
      }
    } catch {
      // gone meanwhile: the original
    }
    if (fd !== undefined) fs.closeSync(fd);
    return undefined;
  }

  /** Whether dev:ino is an image this view answered (a node's object). */
  imageOf(dev: number | bigint, ino: number | bigint): boolean {
    return this.byObject.has(`${dev}:${ino}`);
  }

  /** A descriptor of the image a node was given (through the one held: also when it was removed since). */
  open(dev: number | bigint, ino: number | bigint): number | undefined {
    const held = this.byObject.get(`${dev}:${ino}`);
    if (!held) return undefined;
    try {
      const fd = fs.openSync(`/proc/self/fd/${held.fd}`, fs.constants.O_RDONLY);
      this.counters.served++;
      return fd;
    } catch {
      return undefined; // the caller answers EIO for that node
    }
  }

  /** Images held for epochs before the previous one are let go (their nodes, if any, are long idle). */
  private releaseOldEpochs(previous: string | undefined): void {
    for (const [k, h] of this.byObject) {
      if (h.epoch === this.epoch || h.epoch === previous) continue;
      fs.closeSync(h.fd);
      this.byObject.delete(k);
    }
  }

  /**
   * Asks the daemon for the image, in the background; its OK makes the kernel drop the name. No
   * daemon listening (it exited idle, daemon_idle_seconds): the supervisor is asked to start it and
   * this request is sent again after 1, 2, 4 and 8 s (the kernel may not look the name up again soon).
   */
  private ask(key: string, p: string, st: fs.BigIntStats, attempt = 0): void {
    const last = this.asked.get(key);
    if ((attempt === 0 && last !== undefined && Date.now() - last < ASK_AGAIN_MS) || this.asking >= MAX_ASKING) return;
    this.asked.set(key, Date.now());
    this.asking++;
    this.counters.asked++;
    const epoch = this.epoch;
    // The real tree's path as a process in R names it: the daemon never opens anything through the view.
    const name = '/' + path.relative(this.paths.root, this.paths.realTree + p);
    const c = net.connect(this.hp.socket);
    let answer = '';
    let noDaemon = false;
    c.setTimeout(120_000, () => c.destroy());
    c.on('connect', () => c.write(`Q ${st.dev} ${st.ino} ${st.size} ${st.mtimeNs} ${name}\n`));
    c.on('data', (d) => { answer += d.toString('latin1'); });
    c.on('error', (e: NodeJS.ErrnoException) => { noDaemon = e.code === 'ENOENT' || e.code === 'ECONNREFUSED'; });
    c.on('close', () => {
      this.asking--;
      if (epoch !== this.epoch) return;
      if (noDaemon && attempt < 4) {
        // Fail open meanwhile: the original is served until the image is there.
        if (Date.now() - this.daemonAskedAt > 2000) {
          this.daemonAskedAt = Date.now();
          requestDaemon();
        }
        setTimeout(() => this.ask(key, p, st, attempt + 1), 1000 << attempt).unref();
        return;
      }
      if (answer.startsWith('OK')) {
        this.known.delete(key);
        this.changed.path(p);
      } else if (answer.startsWith('PASS')) {
        this.known.set(key, null);
      }
    });
  }
}

/** Root's regular file, not writable by others, sealed by the daemon (mtime = size: never a truncated image). */
function sealed(st: fs.BigIntStats): boolean {
  return st.isFile() && st.uid === 0n && (st.mode & 0o022n) === 0n && st.mtimeNs / 1_000_000_000n === st.size;
}

/** The image's attributes when it is sealed, else undefined. */
function sealedImage(image: string): fs.BigIntStats | undefined {
  try {
    const st = fs.lstatSync(image, { bigint: true });
    if (sealed(st)) return st;
  } catch {
    // not made yet
  }
  return undefined;
}
