/**
 * The flash store: copies of real files under R/fscache/store, laid out as in the
 * real tree, each described by an index row.
 *
 * Never torn: a copy is written under .partial/, fsynced, checked against the real
 * file's identity taken before and after the copy from the same descriptor, then
 * renamed into place, its directory fsynced, and only then indexed. A copy is served
 * only while the real file's current identity (and ctime) equals the indexed one and the
 * copy's size matches; the first time a view process serves a copy, its bytes are hashed
 * and compared with the hash taken at fill (flash rots), and a copy reached through a
 * symlink is never served. A file changed less than a timestamp tick before its copy was
 * read (coarse, 1-second timestamps) is read again and hashed once that second has passed:
 * a rewrite inside it leaves no trace in mtime or ctime. Recovery at start removes partial files, copies without a row and
 * rows without a whole copy, so a kill at any instant leaves nothing servable torn.
 *
 * Fail open on a broken index: every index call made while serving goes through
 * guarded(); an error answers "no copy" (the view serves the real tree), and a corrupt,
 * deleted or overwritten index is moved aside and rebuilt empty (repair()), counted in
 * the counters that the view's state file shows.
 */
import { createHash, randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { errnoCode } from '../../core/errors';
import { compileGlobs, PathMatcher } from '../../core/glob';
import { identityOf, RealIdentity, sameIdentity } from '../../core/identity';
import { IndexEntry, StoreIndex } from './index-db';
import type { Logger } from '../../core/log';
import type { Paths } from '../../core/paths';
import { checkTrustedPath } from '../../core/trust';
import type { Config } from '../../core/config';
import { openRealFile, realTreeAt } from '../view/real-tree';

const COPY_CHUNK = 1 << 20;
const SECOND_NS = 1000000000n;
/** The kernel stamps files from a clock that may lag by a tick: a margin past the second. */
const TICK_MARGIN_NS = 50000000n;
/** Longest wait for a just-changed file's second to pass (a ctime in the future is not waited for). */
const MAX_SETTLE_NS = 2n * SECOND_NS;

export interface StoreCounters {
  fills: number;
  fillBytes: number;
  fillFailures: number;
  evictions: number;
  evictedBytes: number;
  /** Opens that found a copy made from an older version of the real file (not served). */
  staleFound: number;
  lastFillError?: string;
  /** Set when the flash device said ENOSPC or EROFS, cleared by the next good fill. */
  flashTrouble?: string;
  /** Index errors met while serving (each answered from the real tree). */
  indexErrors: number;
  /** Times the index was found corrupt, deleted or overwritten while running and rebuilt. */
  indexRebuilds: number;
  /** The last of those, with its time; stays set so that status can show it. */
  indexTrouble?: string;
  /** Copies hashed at their first serve in this process, and the milliseconds that took. */
  copiesChecked: number;
  checkMs: number;
  /** Copies refused at that check (bytes that differ from their hash, a symlink on the way): dropped, the real file served. */
  corruptFound: number;
  /** The last of those, with its time and why. */
  lastCorrupt?: string;
}

export class Store {
  readonly counters: StoreCounters = { fills: 0, fillBytes: 0, fillFailures: 0, evictions: 0, evictedBytes: 0, staleFound: 0, indexErrors: 0, indexRebuilds: 0, copiesChecked: 0, checkMs: 0, corruptFound: 0 };
  private readonly wantsFill: PathMatcher;
  private readonly inFlight = new Map<string, Promise<boolean>>();
  private readonly queue: Array<() => void> = [];
  private running = 0;
  private usedBytes: number;
  /** Bytes of copies being written: counted against the quota before they land. */
  private reservedBytes = 0;
  /** Paths whose copy is open through the view: eviction takes others first. */
  readonly inUse = new Map<string, number>();
  private stopped = false;
  /** Why the index must be rebuilt before it is used again; copies are not served meanwhile. */
  private broken?: string;
  /** Copies whose bytes this process has hashed (or written): relPath -> "copy inode:hash". */
  private readonly verified = new Map<string, string>();
  /** Hashes of copies in progress, one per copy however many handles wait for it. */
  private readonly checking = new Map<string, Promise<boolean>>();
  /** The store directory as the kernel names it: an opened copy must resolve under it. */
  private readonly storeReal: string;
  /** Called after a copy lands (the watcher starts watching its directory). */
  onFilled?: (relPath: string) => void;
  /**
   * Called after a copy was removed (evicted, stale, orphaned): the view moves handles still
   * reading it to the real file where that is the same version, so its flash space is freed.
   */
  onDropped?: (relPath: string) => void;

  constructor(
    private readonly paths: Paths,
    private index: StoreIndex,
    private readonly config: Config,
    private readonly log: Logger,
  ) {
    this.wantsFill = compileGlobs(config.fillGlobs);
    this.usedBytes = index.totals().bytes;
    this.storeReal = fs.realpathSync(paths.store);
  }

  /** Creates the store directories. The store holds copies of files that may be secret: root only. */
  static prepare(paths: Paths): void {
    fs.mkdirSync(paths.flash, { recursive: true, mode: 0o711 });
    fs.mkdirSync(paths.store, { recursive: true, mode: 0o700 });
    fs.mkdirSync(paths.storePartial, { recursive: true, mode: 0o700 });
    // A store or index that others can write (or a symlink to theirs) would let them choose
    // the bytes root serves: refused, and the view serves the real tree (core/trust.ts).
    checkTrustedPath(paths.root, paths.storePartial);
    checkTrustedPath(paths.root, paths.index);
    // Modes of installs made before (finding 8 of issue 14): the store's names and bytes are root's
    // only; R/fscache keeps only search for others, as the auditor in every process reads images below it.
    // Safe to chmod by name: the check above proved every directory on the way writable by root only.
    if ((fs.lstatSync(paths.flash).mode & 0o777) !== 0o711) fs.chmodSync(paths.flash, 0o711);
    restrictDirMode(paths.store, 0o700);
    restrictDirMode(paths.storePartial, 0o700);
  }

  copyPath(relPath: string): string {
    return path.join(this.paths.store, relPath);
  }

  get bytes(): number {
    return this.usedBytes;
  }

  /** Takes the bytes in use from the index again: `fscache sync` changes rows from another process. */
  refreshUsage(): void {
    this.usedBytes = this.index.totals().bytes;
  }

  /**
   * Makes store and index agree after any stop, clean or not: partial copies are
   * deleted, rows whose copy is missing or of the wrong size are dropped, copies
   * without a row are deleted.
   */
  recover(): { partial: number; droppedRows: number; orphans: number } {
    const result = { partial: 0, droppedRows: 0, orphans: 0 };
    for (const name of fs.readdirSync(this.paths.storePartial)) {
      fs.rmSync(path.join(this.paths.storePartial, name), { force: true, recursive: true });
      result.partial++;
    }
    const indexed = new Set<string>();
    for (const entry of this.index.all()) {
      let size: bigint | undefined;
      try {
        size = fs.lstatSync(this.copyPath(entry.path), { bigint: true }).size;
      } catch {
        size = undefined;
      }
      if (size !== entry.size) {
        this.index.remove(entry.path);
        result.droppedRows++;
      } else {
        indexed.add(entry.path);
      }
    }
    const walk = (dir: string, rel: string): void => {
      for (const d of fs.readdirSync(dir, { withFileTypes: true })) {
        const childRel = rel === '' ? d.name : `${rel}/${d.name}`;
        if (childRel === '.partial') continue;
        if (d.isDirectory()) walk(path.join(dir, d.name), childRel);
        else if (!indexed.has(childRel)) {
          fs.rmSync(path.join(dir, d.name), { force: true });
          result.orphans++;
          this.onDropped?.(childRel);
        }
      }
    };
    walk(this.paths.store, '');
    this.usedBytes = this.index.totals().bytes;
    return result;
  }

  /**
   * Runs an index operation made while serving. An error answers `fallback` (no copy,
   * so the real tree serves), and a corrupt index is rebuilt (fail open).
   */
  private guarded<T>(fallback: T, op: () => T): T {
    if (this.broken) return fallback;
    try {
      return op();
    } catch (err) {
      this.indexFailed(err);
      return fallback;
    }
  }

  private indexFailed(err: unknown): void {
    const code = errnoCode(err);
    this.counters.indexErrors++;
    if (code === 'SQLITE_CORRUPT' || code === 'SQLITE_NOTADB' || code?.startsWith('SQLITE_IOERR') || code === 'SQLITE_CANTOPEN') {
      this.markBroken(`${this.paths.index} failed: ${code} (${(err as Error).message})`);
    } else if (this.counters.indexErrors === 1 || this.counters.indexErrors % 1000 === 0) {
      // A busy or full index (another process, a full card): this answer comes from the real tree.
      this.log.warn(`index error ${code ?? (err as Error).message} (${this.counters.indexErrors} so far); serving the real tree`);
    }
  }

  private markBroken(reason: string): void {
    if (this.broken) return;
    this.broken = reason;
    this.log.warn(`${reason}: serving the real tree; rebuilding the index`);
    // Not inside the operation that failed: it may still hold the old index's rows.
    setImmediate(() => this.repair());
  }

  /**
   * Moves a broken index aside and continues with an empty one; the copies it named
   * are removed (those open through the view stay readable until closed). When even
   * that fails (the flash device is gone) copies stay off and the next flush retries.
   */
  private repair(): void {
    const reason = this.broken;
    if (!reason || this.stopped) return;
    try {
      this.index.close();
    } catch {
      // a corrupt index may fail its last flush; its connection is closed anyway
    }
    try {
      this.index = StoreIndex.rebuild(this.paths.index, this.log, reason);
      const r = this.recover();
      this.broken = undefined;
      this.counters.indexRebuilds++;
      this.counters.indexTrouble = `${new Date().toISOString()}: ${reason}; moved aside and rebuilt (${r.orphans} copies dropped)`;
    } catch (err) {
      const failed = `${reason}; rebuilding failed (${(err as Error).message}): serving the real tree only`;
      // Retried at every flush: said once per kind of failure, not every few seconds.
      if (!this.counters.indexTrouble?.endsWith(failed)) this.log.warn(failed);
      this.counters.indexTrouble = `${new Date().toISOString()}: ${failed}`;
    }
  }

  /** Whether an indexed copy of `relPath` exists (of any identity). */
  has(relPath: string): boolean {
    return this.guarded(false, () => this.index.get(relPath) !== undefined);
  }

  /** The indexed paths (the watcher watches their directories). */
  indexedPaths(): string[] {
    return this.guarded([], () => this.index.all().map((e) => e.path));
  }

  /** Remembers a use of `relPath` (batched; written by flush()). */
  recordAccess(relPath: string, hit: boolean): void {
    this.guarded(undefined, () => this.index.recordAccess(relPath, hit));
  }

  /**
   * Periodic: writes batched access times, re-reads the bytes in use (`fscache sync`
   * changes rows from another process) and checks that the index file is still the
   * database in use; a broken index is rebuilt here too.
   */
  flush(): void {
    if (this.broken) return this.repair();
    const trouble = this.guarded('', () => this.index.trouble() ?? '');
    if (trouble) return this.markBroken(trouble);
    this.guarded(undefined, () => {
      this.index.flushAccess();
      this.refreshUsage();
    });
  }

  /** Closes the index at stop (after the fills have ended). */
  close(): void {
    this.guarded(undefined, () => this.index.close());
  }

  /**
   * Opens the copy of `relPath` if it may be served for a real file whose identity
   * (from fstat of the descriptor the view opened) is `real`; otherwise undefined.
   */
  openCopy(relPath: string, real: RealIdentity, ctimeNs?: bigint): number | undefined {
    const entry = this.guarded(undefined, () => this.index.get(relPath));
    if (!entry) return undefined;
    // ctime too (when the caller has it): a rewrite with its mtime restored still changes it.
    if (!sameIdentity(entry, real) || (ctimeNs !== undefined && entry.ctimeNs !== ctimeNs)) {
      this.counters.staleFound++;
      return undefined;
    }
    let fd: number | undefined;
    try {
      fd = fs.openSync(this.copyPath(relPath), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
      // O_NOFOLLOW covers the last component only: where the kernel actually went tells whether a
      // store directory was swapped for a symlink to a decoy. Not dropped by name (that follows it too).
      const resolved = fs.readlinkSync(`/proc/self/fd/${fd}`);
      if (resolved !== path.join(this.storeReal, relPath)) {
        this.refused(relPath, `resolves to ${resolved}, outside the store`);
        fs.closeSync(fd);
        this.guarded(undefined, () => this.forget(relPath));
        return undefined;
      }
      const st = fs.fstatSync(fd, { bigint: true });
      if (st.isFile() && st.size === real.size) return fd;
      this.log.warn(`copy of ${relPath} has the wrong size; dropped`);
    } catch (err) {
      this.log.warn(`copy of ${relPath} cannot be opened (${errnoCode(err) ?? err}); dropped`);
    }
    if (fd !== undefined) fs.closeSync(fd);
    this.drop(relPath);
    return undefined;
  }

  /**
   * The check of a copy's bytes at its first serve in this process, for the descriptor
   * openCopy() just returned (same tick): undefined when already done, else resolves
   * false when the bytes differ from the hash taken at fill (the copy is then dropped).
   * Hashed from the descriptor opened, through a descriptor of its own (the handle may close).
   */
  checkCopy(relPath: string, fd: number): Promise<boolean> | undefined {
    const entry = this.guarded(undefined, () => this.index.get(relPath));
    if (!entry) return undefined;
    let key: string;
    let own: number;
    try {
      key = `${fs.fstatSync(fd).ino}:${entry.hash}`;
      if (this.verified.get(relPath) === key) return undefined;
      const running = this.checking.get(`${relPath}\0${key}`);
      if (running) return running;
      own = fs.openSync(`/proc/self/fd/${fd}`, fs.constants.O_RDONLY);
    } catch (err) {
      // Unchecked bytes are not served; the copy stays for a later check.
      this.log.warn(`flash copy of ${relPath} cannot be checked (${errnoCode(err) ?? err}); serving the real file`);
      return Promise.resolve(false);
    }
    const job = (async () => {
      const t0 = process.hrtime.bigint();
      let hash = '';
      try {
        hash = await hashHandle(own, Number(entry.size));
      } catch (err) {
        hash = `unreadable (${errnoCode(err) ?? err})`;
      } finally {
        fs.close(own, () => undefined);
        this.counters.copiesChecked++;
        this.counters.checkMs += Number(process.hrtime.bigint() - t0) / 1e6;
      }
      if (hash === entry.hash) {
        this.verified.set(relPath, key);
        return true;
      }
      this.refused(relPath, hash.startsWith('unreadable') ? hash : 'differs from the hash taken when it was filled');
      // Dropped only if the row still describes the copy checked (a fill may have replaced both).
      this.guarded(undefined, () => {
        if (this.index.get(relPath)?.hash === entry.hash) this.dropUnguarded(relPath);
      });
      // A good copy again, from the real file (the handles that wait for this check read that meanwhile).
      if (this.wants(relPath, entry.size)) void this.fill(relPath);
      return false;
    })().finally(() => this.checking.delete(`${relPath}\0${key}`));
    this.checking.set(`${relPath}\0${key}`, job);
    return job;
  }

  private refused(relPath: string, why: string): void {
    this.counters.corruptFound++;
    this.counters.lastCorrupt = `${new Date().toISOString()}: ${relPath} ${why}`;
    this.log.warn(`flash copy of ${relPath} ${why}; not served (the real file is)`);
  }

  /** Whether the `fill` globs and size limits select this file for flash. */
  wants(relPath: string, size: bigint): boolean {
    return size <= BigInt(this.config.fillMaxFileBytes) && size <= BigInt(this.config.quotaBytes) && this.wantsFill(relPath);
  }

  /** Starts a background copy unless one is running; resolves true when a copy was stored. */
  fill(relPath: string): Promise<boolean> {
    const running = this.inFlight.get(relPath);
    if (running) return running;
    const job = new Promise<boolean>((resolve) => {
      this.queue.push(() => {
        this.copyToFlash(relPath)
          .then(resolve, (err) => {
            this.log.error(`fill of ${relPath} crashed: ${err}`);
            resolve(false);
          })
          .finally(() => {
            this.inFlight.delete(relPath);
            this.running--;
            this.pump();
          });
      });
    });
    this.inFlight.set(relPath, job);
    this.pump();
    return job;
  }

  private pump(): void {
    while (!this.stopped && this.running < this.config.fillConcurrency && this.queue.length > 0) {
      this.running++;
      this.queue.shift()!();
    }
  }

  /** Waits for the fills in flight; queued ones are dropped. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.queue.length = 0;
    await Promise.all([...this.inFlight.values()]);
  }

  /** Removes a copy and its row (the kernel keeps an unlinked copy alive for whoever has it open). */
  drop(relPath: string): void {
    this.guarded(undefined, () => this.dropUnguarded(relPath));
  }

  private dropUnguarded(relPath: string): void {
    const entry = this.index.get(relPath);
    // Removed by name only where no directory on the way is a symlink: never a file it leads to.
    if (this.trustedDir(path.dirname(this.copyPath(relPath)))) fs.rmSync(this.copyPath(relPath), { force: true });
    this.verified.delete(relPath);
    this.index.remove(relPath);
    if (entry) this.usedBytes -= Number(entry.size);
    if (entry) this.onDropped?.(relPath);
  }

  /** Removes the row only (its copy is left to recover(), which removes what no row names without following links). */
  private forget(relPath: string): void {
    const entry = this.index.get(relPath);
    this.index.remove(relPath);
    if (entry) this.usedBytes -= Number(entry.size);
  }

  private trustedDir(dir: string): boolean {
    try {
      checkTrustedPath(this.paths.root, dir);
      return true;
    } catch {
      return false;
    }
  }

  /** Evicts least recently used copies until `incoming` more bytes fit the quota. */
  makeRoom(incoming: number): boolean {
    const fits = () => this.usedBytes + this.reservedBytes + incoming <= this.config.quotaBytes;
    if (fits()) return true;
    this.index.flushAccess();
    const candidates = this.index.leastRecentlyUsed(this.index.totals().entries);
    // Copies open through the view go last: unlinking them is safe, but they are in use.
    const ordered = [...candidates.filter((e) => !this.inUse.has(e.path)), ...candidates.filter((e) => this.inUse.has(e.path))];
    for (const victim of ordered) {
      if (fits()) break;
      this.drop(victim.path);
      this.counters.evictions++;
      this.counters.evictedBytes += Number(victim.size);
      this.log.debug(`evicted ${victim.path} (${victim.size} bytes)`);
    }
    return fits();
  }

  private async copyToFlash(relPath: string): Promise<boolean> {
    const realPath = path.join(this.paths.realTree, relPath);
    const partial = path.join(this.paths.storePartial, randomBytes(8).toString('hex'));
    let real: fs.promises.FileHandle | undefined;
    let out: fs.promises.FileHandle | undefined;
    let reserved = 0;
    if (this.broken) return false;
    try {
      // Beneath the tree's root, through no symlink: a swapped directory never makes root copy a file from elsewhere.
      real = await openRealFile(this.paths.realTree, relPath);
      const beforeSt = await real.stat({ bigint: true });
      const before = identityOf(beforeSt);
      const existing = this.index.get(relPath);
      if (existing && sameIdentity(existing, before) && existing.ctimeNs === beforeSt.ctimeNs) return true;
      if (!this.wants(relPath, before.size)) return false;
      if (!this.makeRoom(Number(before.size))) return false;
      reserved = Number(before.size);
      this.reservedBytes += reserved;

      out = await fs.promises.open(partial, 'wx', 0o600);
      const readFrom = BigInt(Date.now()) * 1000000n;
      const hash = createHash('sha256');
      const buf = Buffer.allocUnsafe(COPY_CHUNK);
      let pos = 0;
      for (;;) {
        const { bytesRead } = await real.read(buf, 0, COPY_CHUNK, pos);
        if (bytesRead === 0) break;
        hash.update(buf.subarray(0, bytesRead));
        await out.write(buf, 0, bytesRead, pos);
        pos += bytesRead;
      }
      await out.sync();
      await out.close();
      out = undefined;
      const digest = hash.digest('hex');
      // The same descriptor, before and after: if the file changed while we copied, the copy may mix versions.
      const afterSt = await real.stat({ bigint: true });
      if (!sameIdentity(before, identityOf(afterSt)) || afterSt.ctimeNs !== beforeSt.ctimeNs || BigInt(pos) !== before.size) {
        this.log.info(`${relPath} changed while being copied; not stored`);
        return false;
      }
      if (!(await this.settled(real, beforeSt, readFrom, digest))) {
        this.log.info(`${relPath} changed within its timestamps' second while being copied; not stored`);
        return false;
      }
      const dest = this.copyPath(relPath);
      fs.mkdirSync(path.dirname(dest), { recursive: true, mode: 0o700 });
      // Never written through a store directory swapped for a symlink.
      if (!this.trustedDir(path.dirname(dest))) throw new Error(`${path.dirname(dest)} is not a directory of the store (symlink or not root's)`);
      // An older copy's row goes before its file is replaced: a row never names bytes that are not its copy.
      this.dropUnguarded(relPath);
      await fs.promises.rename(partial, dest);
      await syncDirectory(path.dirname(dest));
      // Decide on the real path as it is now, in the same tick as the index write: a replacement that happened
      // while we copied is seen here, and one that happens later reaches the watcher after the row exists.
      if (!this.stillNamesIdentity(realPath, before)) {
        this.log.info(`${relPath} was replaced while being copied; not stored`);
        fs.rmSync(dest, { force: true });
        return false;
      }
      const now = Date.now();
      const entry: IndexEntry = { path: relPath, ...before, ctimeNs: beforeSt.ctimeNs, hash: digest, filledAt: now, lastAccess: now, hits: 0 };
      this.index.put(entry);
      // Its bytes were hashed as they were written: no check at its first serve in this process.
      this.verified.set(relPath, `${fs.statSync(dest).ino}:${digest}`);
      this.usedBytes += pos;
      this.counters.fills++;
      this.counters.fillBytes += pos;
      this.counters.flashTrouble = undefined;
      this.onFilled?.(relPath);
      return true;
    } catch (err) {
      const code = errnoCode(err);
      this.counters.fillFailures++;
      this.counters.lastFillError = `${relPath}: ${code ?? (err as Error).message}`;
      if (code?.startsWith('SQLITE_')) this.indexFailed(err);
      // The index shares the flash device: SQLite says SQLITE_FULL or SQLITE_IOERR where the copy would say ENOSPC or EIO.
      if (code === 'ENOSPC' || code === 'EROFS' || code === 'EDQUOT' || code === 'EIO' || code === 'SQLITE_FULL' || code?.startsWith('SQLITE_IOERR') || code === 'SQLITE_READONLY') {
        this.counters.flashTrouble = `flash store ${code} while copying ${relPath}`;
        this.log.warn(`${this.counters.flashTrouble}; serving from the real tree`);
      } else if (code !== 'ENOENT') {
        this.log.info(`fill of ${relPath} failed: ${code ?? (err as Error).message}`);
      }
      return false;
    } finally {
      this.reservedBytes -= reserved;
      await out?.close().catch(() => undefined);
      await real?.close().catch(() => undefined);
      await fs.promises.rm(partial, { force: true }).catch(() => undefined);
    }
  }

  /**
   * Whether a copy read from `real` (from `readFrom`, wall clock ns) may be adopted. A write
   * within the second of the file's last change may leave mtime and ctime as they were (1-second
   * timestamps; a stamp may also lag a tick): when the copy was read before that second (plus a
   * margin) had passed, wait for it, read the real file again through the same descriptor and
   * adopt the copy only if its hash is the copy's and the identity and ctime are unchanged.
   * From then on any write stamps a later second, which the identity check at serve sees.
   */
  private async settled(real: fs.promises.FileHandle, st: fs.BigIntStats, readFrom: bigint, digest: string): Promise<boolean> {
    const settledAt = st.ctimeNs - (st.ctimeNs % SECOND_NS) + SECOND_NS + TICK_MARGIN_NS;
    if (readFrom >= settledAt) return true;
    const wait = settledAt - BigInt(Date.now()) * 1000000n;
    if (wait > MAX_SETTLE_NS) return false; // a ctime in the future (clock stepped back): refuse rather than guess
    if (wait > 0n) await new Promise((r) => setTimeout(r, Number(wait / 1000000n) + 1));
    const again = await hashHandle(real.fd, Number(st.size));
    const now = await real.stat({ bigint: true });
    return again === digest && sameIdentity(identityOf(st), identityOf(now)) && now.ctimeNs === st.ctimeNs;
  }

  private stillNamesIdentity(realPath: string, identity: RealIdentity): boolean {
    try {
      return sameIdentity(identity, identityOf(realTreeAt(this.paths.realTree).lstat('/' + path.relative(this.paths.realTree, realPath))));
    } catch {
      return false;
    }
  }

  /** Drops every copy whose real file no longer has the indexed identity; returns their paths. */
  revalidateAll(): string[] {
    const dropped: string[] = [];
    for (const entry of this.guarded([], () => this.index.all())) {
      if (!this.stillNamesIdentity(path.join(this.paths.realTree, entry.path), entry)) {
        this.drop(entry.path);
        dropped.push(entry.path);
      }
    }
    return dropped;
  }
}

/** sha256 (hex) of the whole file open as `fd`, read asynchronously in chunks of up to 1 MiB (`size` only sizes the buffer). */
async function hashHandle(fd: number, size: number): Promise<string> {
  const hash = createHash('sha256');
  const buf = Buffer.allocUnsafe(Math.min(COPY_CHUNK, Math.max(size, 1)));
  let pos = 0;
  for (;;) {
    const n = await new Promise<number>((resolve, reject) => fs.read(fd, buf, 0, buf.length, pos, (err, got) => (err ? reject(err) : resolve(got))));
    if (n === 0) break;
    hash.update(buf.subarray(0, n));
    pos += n;
  }
  return hash.digest('hex');
}

/** Takes `mode`'s missing bits off a directory's mode (a mode already stricter is kept). */
function restrictDirMode(dir: string, mode: number): void {
  const st = fs.lstatSync(dir);
  if (st.isDirectory() && (st.mode & 0o777 & ~mode) !== 0) fs.chmodSync(dir, st.mode & 0o777 & mode);
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await fs.promises.open(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
