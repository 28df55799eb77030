/**
 * The image store of the loader hook: epochs, randomized images and refused libraries.
 *
 * Layout (all root-owned): R/fscache/images/<epoch>/<key>.so (0444, in a 0711 directory: every
 * process's hook opens its image by name, nobody lists which libraries have one),
 * R/fscache/images/<epoch>/<key>.pass (a refused library: the hook loads the original without
 * asking), R/run/fscache/epoch (what the hook reads once per process: "<epoch> <on_miss>
 * <miss_wait_ms> <images dir relative to R> <library dirs relative to R, ':'-joined> <real tree relative to R>
 * <view mount relative to R>"). The key is the identity of the library file in the real tree (dev, ino, size,
 * mtime ns, in hex, joined by '-') exactly as audit.c computes it (for a file it found through the view, from
 * the same relative path in the real tree: the view's device number changes with every mount).
 *
 * Promises kept here: an image is written under a temporary name, synced, then renamed, so the
 * hook never sees a torn image; only root-owned, world-readable, not-writable-by-others regular
 * files inside the configured library directories are randomized, decided on the opened
 * descriptor; names are resolved on the real tree's side of the link (real-path.ts), so a library
 * asked for as /usr/lib/x.so while the link points at the view is the real tree's file, and the
 * daemon never opens anything through the view; a library the randomizer refuses is remembered
 * with its reason (and tried once more in the next epoch, since a refusal can depend on the seed).
 * Images checked before the hook may use them: an image's mtime is set to its size in
 * seconds before it is renamed into place, and the hook uses an image only where its lstat shows
 * the two equal (a truncated image would make the next launch die of SIGBUS); its sha256 is in the
 * index, and a daemon taking over an epoch re-hashes every image before it answers (checkImages).
 * Disclosure: the seed of each epoch (which decides every layout) and the list of cached paths live
 * in the index, kept 0600 under a 0711 R/fscache; an image or marker, whose name is a file's
 * identity, is made only for a file every user could stat anyway.
 */
import Database from 'better-sqlite3';
import { createHash, randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { ElfFormatError, ElfRefusal, prepareLibrary, randomizePrepared, unmovedNote } from '../elf';
import type { Config } from '../core/config';
import { errnoCode } from '../core/errors';
import { identityOf, RealIdentity, sameIdentity } from '../core/identity';
import { StoreIndex } from '../fs/store/index-db';
import type { Logger } from '../core/log';
import type { Paths } from '../core/paths';
import { writeAtomic } from '../core/write-atomic';
import { HookPaths, hookPaths, keyOf } from './hook-paths';
import { RealPathError, realTreePath, realTreePathOrUndefined } from './real-path';

export { hookPaths, keyOf };
export type { HookPaths };

export type ImageKey = string;
export type Epoch = string;

export interface HookFailure { at: number; source: string; message: string }

export function readFailures(hp: HookPaths): HookFailure[] {
  try {
    return JSON.parse(fs.readFileSync(hp.failuresFile, 'utf8')) as HookFailure[];
  } catch {
    return [];
  }
}

/**
 * The epoch's images (how many, their bytes) and the libraries passed through with their reasons,
 * read with a read-only connection that changes nothing (status). Empty when the index is missing,
 * unreadable (to this user, or broken: the store's part of status says so) or has no hook tables yet.
 */
export function epochSummary(index: string, epoch: string | null): { images: { count: number; bytes: number }; passThroughs: Array<{ source: string; reason: string }> } {
  const summary = { images: { count: 0, bytes: 0 }, passThroughs: [] as Array<{ source: string; reason: string }> };
  if (!fs.existsSync(index)) return summary;
  try {
    const db = new Database(index, { readonly: true, fileMustExist: true });
    try {
      const tables = new Set((db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as Array<{ name: string }>).map((t) => t.name));
      if (tables.has('hook_images')) {
        const row = db.prepare('SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes FROM hook_images WHERE epoch = ?').get(epoch) as { n: number; bytes: number };
        summary.images = { count: Number(row.n), bytes: Number(row.bytes) };
      }
      if (tables.has('hook_passthrough')) {
        summary.passThroughs = db.prepare('SELECT source, reason FROM hook_passthrough WHERE epoch = ? ORDER BY source').all(epoch) as typeof summary.passThroughs;
      }
    } finally {
      db.close();
    }
  } catch {
    // unreadable: nothing to show
  }
  return summary;
}

export type MakeResult =
  | { kind: 'image'; key: ImageKey; image: string; made: boolean; ms: number }
  /** The randomizer refused the library: remembered, marked for the hook, not retried. */
  | { kind: 'pass'; key: ImageKey; reason: string; library: string }
  /** Not eligible (policy) or the file changed: not remembered, the original loads. `library`: the
   * real tree's path when the name resolved, else the name as asked. */
  | { kind: 'refused'; reason: string; library?: string };

export interface ImageRow { epoch: Epoch; key: ImageKey; source: string; size: number; madeMs: number; created: number; lastAccess: number }
export interface PassRow { key: ImageKey; source: string; reason: string; epoch: Epoch; at: number }

const O_NOFOLLOW = fs.constants.O_NOFOLLOW;
/** Larger files are not read into memory: any user can ask for any library. */
const MAX_LIBRARY_BYTES = 512n << 20n;

function bootId(): string {
  try {
    return fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

// One atomic write for the whole project; re-exported for env.ts and older callers.
export { writeAtomic };

/**
 * A root-owned directory (created or fixed), refusing a symlink in its place. 0711 by default: the
 * hook in every process reaches files in it by name, and no one but root lists what is there.
 */
function ensureRootDir(dir: string, mode = 0o711): void {
  fs.mkdirSync(dir, { recursive: true, mode });
  const st = fs.lstatSync(dir);
  if (!st.isDirectory()) throw new Error(`${dir} is not a directory`);
  fs.chownSync(dir, 0, 0);
  fs.chmodSync(dir, mode);
}

/** The index (and its WAL files, which SQLite creates with the index's mode) readable by root only. */
function protectIndex(index: string): void {
  for (const f of [index, `${index}-wal`, `${index}-shm`]) {
    try {
      if (fs.lstatSync(f).isFile()) fs.chmodSync(f, 0o600);
    } catch {
      // not there (yet): SQLite copies the index's mode when it makes one
    }
  }
}

/**
 * Whether every user could reach `file` by name: each directory below R down to it searchable by
 * others (R itself is / to the processes in it). A file's identity (the key naming its image or
 * marker) must not be told about a file in a directory others cannot search (finding: a .pass
 * marker gave the inode, size and mtime of a file in a 0700 directory).
 */
function reachableByAll(root: string, file: string): boolean {
  const top = root.endsWith('/') ? root : root + '/';
  for (let d = path.dirname(file); d.startsWith(top) && d !== path.dirname(d); d = path.dirname(d)) {
    try {
      if ((fs.statSync(d).mode & 0o001) === 0) return false;
    } catch {
      return false;
    }
  }
  return true;
}

/** Absolute paths of every file under `prefix` that some process maps now (from /proc/PID/maps). */
export function mappedUnder(prefix: string): Set<string> {
  const out = new Set<string>();
  const want = prefix.endsWith('/') ? prefix : prefix + '/';
  for (const pid of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    let text: string;
    try {
      text = fs.readFileSync(`/proc/${pid}/maps`, 'utf8');
    } catch {
      continue; // gone, or not ours to read
    }
    if (!text.includes(want)) continue;
    for (const line of text.split('\n')) {
      const at = line.indexOf(want);
      if (at >= 0) out.add(line.slice(at).replace(/ \(deleted\)$/, ''));
    }
  }
  return out;
}

export class ImageStore {
  readonly hp: HookPaths;
  private readonly db: Database.Database;
  /** Randomizations done by this process (tests count them). */
  randomizations = 0;

  constructor(readonly paths: Paths, readonly config: Config, readonly log: Logger) {
    this.hp = hookPaths(paths);
    // Root's, and searchable only: the hook in every process reaches R/fscache/images through it;
    // the index and the store in it are not for others to read or list.
    ensureRootDir(paths.flash);
    StoreIndex.open(paths.index, log).close(); // creates or migrates the schema
    protectIndex(paths.index); // it holds every epoch's seed and the paths of what is cached
    this.db = new Database(paths.index);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('busy_timeout = 5000');
  }

  close(): void {
    this.db.close();
  }

  // ---- epochs ----

  /** The epoch named by the epoch file, if its directory and seed exist. */
  currentEpoch(): { epoch: Epoch; seed: Buffer } | undefined {
    let text: string;
    try {
      text = fs.readFileSync(this.hp.epochFile, 'utf8');
    } catch {
      return undefined;
    }
    const epoch = text.split(' ')[0];
    const row = this.db.prepare('SELECT seed FROM hook_epochs WHERE epoch = ?').get(epoch) as { seed: string } | undefined;
    if (!row || !fs.existsSync(path.join(this.hp.images, epoch))) return undefined;
    return { epoch, seed: Buffer.from(row.seed, 'hex') };
  }

  /**
   * Makes sure an epoch is active: a new one when there is none, or when the current one was
   * made before this boot (R/run is normally a tmpfs, but do not rely on it).
   */
  ensureEpoch(): Epoch {
    const cur = this.currentEpoch();
    if (cur) {
      const row = this.db.prepare('SELECT boot_id FROM hook_epochs WHERE epoch = ?').get(cur.epoch) as { boot_id: string };
      if (row.boot_id === bootId()) {
        // Images made by an earlier daemon of this boot have sat on flash since: checked before it goes on.
        this.checkImages(cur.epoch);
        this.writeEpochFile(cur.epoch); // on_miss/miss_wait_ms may have changed
        return cur.epoch;
      }
    }
    return this.newEpoch();
  }

  /** A new epoch with a fresh random seed; older epochs are removed once no process maps them. */
  newEpoch(): Epoch {
    ensureRootDir(this.hp.images);
    const max = this.db.prepare('SELECT MAX(CAST(epoch AS INTEGER)) AS m FROM hook_epochs').get() as { m: number | null };
    let n = (max.m ?? 0) + 1;
    while (fs.existsSync(path.join(this.hp.images, String(n)))) n++;
    const epoch = String(n);
    const dir = path.join(this.hp.images, epoch);
    ensureRootDir(dir);
    this.db.prepare('INSERT INTO hook_epochs (epoch, seed, boot_id, created) VALUES (?, ?, ?, ?)')
      .run(epoch, randomBytes(32).toString('hex'), bootId(), Date.now());
    // Refusals are not carried over: some depend on the seed (no layout fitting the alignment
    // padding), so each library refused before is tried once more in the new epoch.
    this.writeEpochFile(epoch);
    this.log.info(`hook: epoch ${epoch} started`);
    this.gcEpochs();
    return epoch;
  }

  writeEpochFile(epoch: Epoch): void {
    ensureRootDir(path.dirname(this.hp.epochFile), 0o755); // as fs/switch/pause.ts makes it; what is secret in it is 0600
    const rel = path.relative(this.paths.root, this.hp.images);
    // The hook asks the daemon only about paths under these (a gate, not a trust decision).
    const dirs = this.config.libraryDirs.join(':');
    // A file the hook finds through the view is keyed by the same relative path in the real tree.
    const real = path.relative(this.paths.root, this.paths.realTree);
    const view = path.relative(this.paths.root, this.paths.viewMount);
    writeAtomic(this.hp.epochFile, `${epoch} ${this.config.onMiss} ${this.config.missWaitMs} ${rel} ${dirs} ${real} ${view}\n`, 0o644);
  }

  /** Removes the directories of past epochs that no process maps any more. */
  gcEpochs(): string[] {
    const cur = this.currentEpoch()?.epoch;
    let names: string[];
    try {
      names = fs.readdirSync(this.hp.images);
    } catch {
      return [];
    }
    const mapped = mappedUnder(this.hp.images);
    const removed: string[] = [];
    for (const name of names) {
      if (name === cur) continue;
      const dir = path.join(this.hp.images, name);
      if ([...mapped].some((m) => m.startsWith(dir + '/'))) continue;
      fs.rmSync(dir, { recursive: true, force: true });
      this.db.prepare('DELETE FROM hook_images WHERE epoch = ?').run(name);
      this.db.prepare('DELETE FROM hook_passthrough WHERE epoch = ?').run(name);
      this.db.prepare('DELETE FROM hook_epochs WHERE epoch = ?').run(name);
      removed.push(name);
    }
    if (removed.length) this.log.info(`hook: removed unused epochs ${removed.join(', ')}`);
    return removed;
  }

  /**
   * Checks every image of `epoch` against the size and sha256 recorded when it was made, and
   * removes what does not match (a byte rotted on flash, a truncation, an image without a row):
   * the hook then asks again and a new image is made. Images of before the sha256 column are
   * removed too (nothing to check them against). Once per daemon start, before it answers.
   */
  checkImages(epoch: Epoch): { checked: number; removed: string[]; ms: number } {
    const t0 = performance.now();
    const dir = path.join(this.hp.images, epoch);
    const removed: string[] = [];
    let checked = 0;
    let names: string[];
    try {
      names = fs.readdirSync(dir).filter((n) => n.endsWith('.so'));
    } catch {
      return { checked, removed, ms: 0 };
    }
    const rowOf = this.db.prepare('SELECT size, sha256 FROM hook_images WHERE epoch = ? AND key = ?');
    for (const name of names) {
      const file = path.join(dir, name);
      const key = name.slice(0, -3);
      const row = rowOf.get(epoch, key) as { size: number; sha256: string | null } | undefined;
      let why: string | undefined;
      try {
        const st = fs.lstatSync(file);
        if (!st.isFile()) why = 'not a regular file';
        else if (!row?.sha256) why = 'no recorded hash';
        else if (st.size !== row.size) why = `size ${st.size}, made with ${row.size}`;
        else if (createHash('sha256').update(fs.readFileSync(file)).digest('hex') !== row.sha256) why = 'contents differ from those made';
        else if (Math.floor(st.mtimeMs / 1000) !== st.size) fs.utimesSync(file, st.size, st.size); // sealed as the hook expects
        checked++;
      } catch (e) {
        why = `unreadable (${errnoCode(e) ?? (e as Error).message})`;
      }
      if (!why) continue;
      fs.rmSync(file, { force: true, recursive: false });
      this.db.prepare('DELETE FROM hook_images WHERE epoch = ? AND key = ?').run(epoch, key);
      removed.push(name);
      this.log.warn(`hook: image ${file} removed: ${why}`);
    }
    const ms = performance.now() - t0;
    this.log.info(`hook: checked ${checked} image(s) of epoch ${epoch} in ${ms.toFixed(0)} ms, ${removed.length} removed`);
    return { checked, removed, ms };
  }

  // ---- eligibility and randomization ----

  /**
   * The library directories on the real tree's side of the link (lib -> usr/lib -> usr.real/lib),
   * whichever way it points; resolved at each use, since one may be created after the daemon
   * started (a few lstat calls, on a miss only). One that does not exist holds nothing to randomize.
   */
  private libraryDirs(): string[] {
    return [...new Set(this.config.libraryDirs.map((d) => realTreePathOrUndefined(this.paths, '/' + d)).filter((d): d is string => !!d))];
  }

  private insideLibraryDirs(real: string): boolean {
    return this.libraryDirs().some((d) => real.startsWith(d + '/'));
  }

  /**
   * Makes (or finds) the current epoch's image of the library at `source` (a host path under R, as
   * a process in R names it). `expected` is the identity the hook saw (of the real tree's file); if
   * the file we open is not that file, nothing is made.
   */
  makeImage(source: string, expected?: RealIdentity): MakeResult {
    const cur = this.currentEpoch();
    if (!cur) return { kind: 'refused', reason: 'no active epoch', library: source };
    const name = '/' + path.relative(this.paths.root, source);
    if (name.startsWith('/..')) return { kind: 'refused', reason: 'outside the root', library: source };
    // By name first, before opening anything as root (a device or FIFO elsewhere must not be opened),
    // on the real tree's side of the link (never through the view); then again on the descriptor,
    // which is what decides.
    let byName: string;
    try {
      byName = realTreePath(this.paths, name);
    } catch (e) {
      if (!(e instanceof RealPathError)) throw e;
      return { kind: 'refused', reason: `does not resolve (${e.code})`, library: source };
    }
    if (!this.insideLibraryDirs(byName)) return { kind: 'refused', reason: 'outside the configured library directories', library: byName };
    let fd: number;
    try {
      fd = fs.openSync(byName, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | O_NOFOLLOW);
    } catch (e) {
      return { kind: 'refused', reason: `cannot open (${errnoCode(e) ?? (e as Error).message})`, library: byName };
    }
    try {
      // Every decision below is about this descriptor, never about the name.
      const st = fs.fstatSync(fd, { bigint: true });
      const id = identityOf(st);
      if (!st.isFile()) return { kind: 'refused', reason: 'not a regular file', library: byName };
      // Where the kernel says the descriptor is: a directory swapped for a link meanwhile shows here.
      const real = fs.readlinkSync(`/proc/self/fd/${fd}`);
      if (!this.insideLibraryDirs(real)) return { kind: 'refused', reason: 'outside the configured library directories', library: real };
      // Asking must disclose nothing and poison nothing: only files everyone may read and only root may change.
      const policy = st.uid !== 0n ? 'not owned by root'
        : (st.mode & 0o004n) === 0n ? 'not readable by others'
        : (st.mode & 0o022n) !== 0n ? 'writable by group or others' : undefined;
      const hidden = !reachableByAll(this.paths.root, real);
      if (policy) {
        // Marked for this epoch only (no index row): a later chmod is picked up by the next epoch.
        if (!hidden) this.markPass(cur.epoch, keyOf(id), `not eligible: ${policy}`);
        return { kind: 'refused', reason: policy, library: real };
      }
      // No image and no marker: either would name the identity of a file others cannot stat.
      if (hidden) return { kind: 'refused', reason: 'in a directory others cannot search', library: real };
      if (st.size > MAX_LIBRARY_BYTES) return { kind: 'refused', reason: `larger than ${MAX_LIBRARY_BYTES >> 20n} MiB`, library: real };
      // Compared only now, for a file anyone may stat anyway: no oracle about unreadable files.
      if (expected && !sameIdentity(id, expected)) return { kind: 'refused', reason: 'file is not the one the hook found (changed?)', library: real };
      const key = keyOf(id);
      const image = path.join(this.hp.images, cur.epoch, `${key}.so`);
      if (this.intact(cur.epoch, key, image)) return { kind: 'image', key, image, made: false, ms: 0 };
      const known = this.db.prepare('SELECT reason FROM hook_passthrough WHERE key = ? AND epoch = ?').get(key, cur.epoch) as { reason: string } | undefined;
      if (known) {
        this.markPass(cur.epoch, key, known.reason);
        return { kind: 'pass', key, reason: known.reason, library: real };
      }
      const t0 = performance.now();
      const bytes = fs.readFileSync(fd);
      // A library swapped or rewritten while we read it: its bytes are not those of `key`.
      if (!sameIdentity(identityOf(fs.fstatSync(fd, { bigint: true })), id) || BigInt(bytes.length) !== id.size) {
        return { kind: 'refused', reason: 'changed while being read', library: real };
      }
      let out: Uint8Array;
      let unmoved = '';
      try {
        const seed = createHash('sha256').update(cur.seed).update(key).digest();
        const r = randomizePrepared(prepareLibrary(bytes), seed);
        out = r.bytes;
        unmoved = unmovedNote(r.layout);
      } catch (e) {
        if (!(e instanceof ElfRefusal || e instanceof ElfFormatError)) throw e;
        const reason = e instanceof ElfFormatError ? `malformed: ${e.message}` : e.message;
        this.db.prepare('INSERT OR REPLACE INTO hook_passthrough (key, source, reason, epoch, at) VALUES (?, ?, ?, ?, ?)').run(key, real, reason, cur.epoch, Date.now());
        this.markPass(cur.epoch, key, reason);
        this.log.info(`hook: passing through ${real}: ${reason}`);
        return { kind: 'pass', key, reason, library: real };
      }
      this.randomizations++;
      this.evict(out.length);
      // Sealed before the rename (the header): the hook never sees an image without its recorded size.
      writeAtomic(image, out, 0o444, { mtimeSec: out.length });
      const ms = Math.round(performance.now() - t0);
      const now = Date.now();
      this.db.prepare(`INSERT OR REPLACE INTO hook_images (epoch, key, source, size, made_ms, created, last_access, sha256)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?)`).run(cur.epoch, key, real, out.length, ms, now, now, createHash('sha256').update(out).digest('hex'));
      this.log.info(`hook: randomized ${real} -> ${image} in ${ms} ms` + (unmoved ? `; ${unmoved}` : ''));
      return { kind: 'image', key, image, made: true, ms };
    } finally {
      fs.closeSync(fd);
    }
  }

  /**
   * Whether the image is there with the size it was made with and its seal (mtime = size); one
   * that is not (truncated on flash: the hook loads the original and asks) is removed, to be made again.
   */
  private intact(epoch: Epoch, key: ImageKey, image: string): boolean {
    let st: fs.Stats;
    try {
      st = fs.lstatSync(image);
    } catch {
      return false;
    }
    const row = this.db.prepare('SELECT size FROM hook_images WHERE epoch = ? AND key = ?').get(epoch, key) as { size: number } | undefined;
    if (st.isFile() && row?.size === st.size && Math.floor(st.mtimeMs / 1000) === st.size) return true;
    this.log.warn(`hook: image ${image} removed: size ${st.size}, made with ${row?.size ?? 'no record'}`);
    fs.rmSync(image, { force: true });
    this.db.prepare('DELETE FROM hook_images WHERE epoch = ? AND key = ?').run(epoch, key);
    return false;
  }

  private markPass(epoch: Epoch, key: ImageKey, reason: string): void {
    const marker = path.join(this.hp.images, epoch, `${key}.pass`);
    try {
      if (!fs.existsSync(marker)) writeAtomic(marker, reason + '\n', 0o444);
    } catch (e) {
      // Without the marker launches ask again: slower, never wrong.
      this.log.warn(`hook: cannot write ${marker}: ${(e as Error).message}`);
    }
  }

  /**
   * Keeps the images within images_max_bytes/images_max_count, making room for `incoming` bytes:
   * least recently used first, where "used" is refreshed from the processes mapping images now.
   * Unlinking is safe while mapped: the kernel frees an image when its last user unmaps it.
   */
  evict(incoming = 0): string[] {
    const over = () => {
      const t = this.db.prepare('SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS b FROM hook_images').get() as { n: number; b: number };
      return t.b + incoming > this.config.imagesMaxBytes || t.n + (incoming > 0 ? 1 : 0) > this.config.imagesMaxCount;
    };
    if (!over()) return []; // reading every process's maps is not free: only when something must go
    const now = Date.now();
    const touch = this.db.prepare('UPDATE hook_images SET last_access = ? WHERE epoch = ? AND key = ?');
    for (const m of mappedUnder(this.hp.images)) {
      const rel = path.relative(this.hp.images, m).split('/');
      if (rel.length === 2 && rel[1].endsWith('.so')) touch.run(now, rel[0], rel[1].slice(0, -3));
    }
    const rows = this.images().sort((a, b) => a.lastAccess - b.lastAccess);
    let bytes = rows.reduce((s, r) => s + r.size, 0) + incoming;
    let count = rows.length + (incoming > 0 ? 1 : 0);
    const evicted: string[] = [];
    for (const r of rows) {
      if (bytes <= this.config.imagesMaxBytes && count <= this.config.imagesMaxCount) break;
      const file = path.join(this.hp.images, r.epoch, `${r.key}.so`);
      fs.rmSync(file, { force: true });
      this.db.prepare('DELETE FROM hook_images WHERE epoch = ? AND key = ?').run(r.epoch, r.key);
      bytes -= r.size;
      count--;
      evicted.push(file);
    }
    if (evicted.length) this.log.info(`hook: evicted ${evicted.length} image(s) (LRU)`);
    return evicted;
  }

  // ---- listing ----

  images(): ImageRow[] {
    return (this.db.prepare('SELECT * FROM hook_images ORDER BY source').all() as Record<string, number | string>[]).map((r) => ({
      epoch: String(r.epoch), key: String(r.key), source: String(r.source), size: Number(r.size),
      madeMs: Number(r.made_ms), created: Number(r.created), lastAccess: Number(r.last_access),
    }));
  }

  passThroughs(): PassRow[] {
    return (this.db.prepare('SELECT * FROM hook_passthrough ORDER BY source').all() as Record<string, number | string>[]).map((r) => ({
      key: String(r.key), source: String(r.source), reason: String(r.reason), epoch: String(r.epoch), at: Number(r.at),
    }));
  }

  /** Every regular file named like a shared library under the configured directories (for warm). */
  candidates(): string[] {
    const out: string[] = [];
    const seen = new Set<string>();
    const walk = (dir: string, depth: number) => {
      let ents: fs.Dirent[];
      try {
        ents = fs.readdirSync(dir, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of ents) {
        const p = path.join(dir, e.name);
        if (e.isDirectory() && depth < 4) walk(p, depth + 1);
        else if (e.isFile() && /\.so(\.\d+)*$/.test(e.name) && !seen.has(p)) {
          seen.add(p);
          out.push(p);
        }
      }
    };
    for (const d of this.libraryDirs()) walk(d, 0);
    return out.sort();
  }
}
