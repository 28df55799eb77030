/**
 * The index of the flash store (better-sqlite3, WAL): one row per cached file with
 * the real file's identity at copy time, the copy's hash, and its use. A row exists
 * only for a copy that was completely written, synced and renamed into place.
 *
 * The schema is versioned with PRAGMA user_version; MIGRATIONS[i] takes version i
 * to i+1. A corrupt or unreadable index is moved aside and rebuilt: the store is a
 * cache, so losing the index costs refills, never correctness.
 */
import Database from 'better-sqlite3';
import * as fs from 'fs';
import * as path from 'path';
import { native } from '../../core/native';
import { errnoCode } from '../../core/errors';
import type { RealIdentity } from '../../core/identity';
import type { Logger } from '../../core/log';

export interface IndexEntry extends RealIdentity {
  /** Path relative to the real tree, no leading slash. */
  path: string;
  /** sha256 of the copy, hex. */
  hash: string;
  /**
   * The real file's ctime at copy time (null in rows from before it was recorded, which
   * are then never served). Nobody can set a ctime: a rewrite whose mtime was restored
   * (touch -d, or through another hard link) still changes it.
   */
  ctimeNs?: bigint | null;
  filledAt: number;
  lastAccess: number;
  hits: number;
}

const MIGRATIONS: string[] = [
  `CREATE TABLE entries (
     path TEXT PRIMARY KEY,
     dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
     hash TEXT NOT NULL,
     filled_at INTEGER NOT NULL,
     last_access INTEGER NOT NULL,
     hits INTEGER NOT NULL DEFAULT 0
   );
   CREATE INDEX entries_lru ON entries(last_access);`,
  // Loader hook (loader-hook/): epochs with their seeds, randomized images, refused libraries.
  `CREATE TABLE hook_epochs (
     epoch TEXT PRIMARY KEY, seed TEXT NOT NULL, boot_id TEXT NOT NULL, created INTEGER NOT NULL
   );
   CREATE TABLE hook_images (
     epoch TEXT NOT NULL, key TEXT NOT NULL, source TEXT NOT NULL, size INTEGER NOT NULL,
     made_ms INTEGER NOT NULL, created INTEGER NOT NULL, last_access INTEGER NOT NULL,
     PRIMARY KEY (epoch, key)
   );
   CREATE INDEX hook_images_lru ON hook_images(last_access);
   CREATE TABLE hook_passthrough (
     key TEXT PRIMARY KEY, source TEXT NOT NULL, reason TEXT NOT NULL, epoch TEXT NOT NULL, at INTEGER NOT NULL
   );`,
  // The real file's ctime (finding 6 of issue 14); older rows keep NULL and are refilled.
  `ALTER TABLE entries ADD COLUMN ctime_ns INTEGER;`,
  `ALTER TABLE hook_images ADD COLUMN sha256 TEXT;`,
];
export const SCHEMA_VERSION = MIGRATIONS.length;
const SQLITE_MAGIC = Buffer.from('SQLite format 3\0', 'latin1');
const KEPT_ASIDE = 3;

interface Row {
  path: string;
  dev: bigint;
  ino: bigint;
  size: bigint;
  mtime_ns: bigint;
  ctime_ns: bigint | null;
  hash: string;
  filled_at: bigint;
  last_access: bigint;
  hits: bigint;
}

function fromRow(r: Row): IndexEntry {
  return {
    path: r.path, dev: r.dev, ino: r.ino, size: r.size, mtimeNs: r.mtime_ns, ctimeNs: r.ctime_ns, hash: r.hash,
    filledAt: Number(r.filled_at), lastAccess: Number(r.last_access), hits: Number(r.hits),
  };
}

/**
 * Takes group and other permissions off an index file that exists (a missing -wal or -shm is fine).
 * Through an O_PATH descriptor: closing any other descriptor of a file drops every POSIX lock this
 * process holds on it, and SQLite's locks on -shm are what tell the next process it is not alone
 * (measured: the view's lock gone, a status run reset -shm and the view died of SIGBUS in SQLite).
 * Closing an O_PATH descriptor drops no lock; chmod of its /proc/self/fd link changes that object.
 */
function restrictMode(file: string): void {
  let fd: number;
  try {
    fd = fs.openSync(file, native.constants.O_PATH | fs.constants.O_NOFOLLOW);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return;
    throw err;
  }
  try {
    const st = fs.fstatSync(fd);
    // Never through a symlink planted in the index's place (O_NOFOLLOW gave the link itself).
    if (!st.isFile()) throw new Error(`${file} is not a regular file`);
    if ((st.mode & 0o077) !== 0) fs.chmodSync(`/proc/self/fd/${fd}`, 0o600);
  } finally {
    fs.closeSync(fd);
  }
}

export class StoreIndex {
  private readonly db: Database.Database;
  private pendingAccess = new Map<string, { at: number; hits: number }>();
  private readonly stmt;

  /** Device and inode of the file opened, for trouble(). */
  private readonly opened?: { dev: number; ino: number };

  private constructor(db: Database.Database, private readonly file?: string) {
    this.db = db;
    if (file) {
      const st = fs.statSync(file);
      this.opened = { dev: st.dev, ino: st.ino };
    }
    db.defaultSafeIntegers(true);
    this.stmt = {
      get: db.prepare('SELECT * FROM entries WHERE path = ?'),
      put: db.prepare(
        `INSERT INTO entries (path, dev, ino, size, mtime_ns, ctime_ns, hash, filled_at, last_access, hits)
         VALUES (@path, @dev, @ino, @size, @mtimeNs, @ctimeNs, @hash, @filledAt, @lastAccess, @hits)
         ON CONFLICT(path) DO UPDATE SET dev=@dev, ino=@ino, size=@size, mtime_ns=@mtimeNs, ctime_ns=@ctimeNs, hash=@hash,
           filled_at=@filledAt, last_access=@lastAccess`,
      ),
      remove: db.prepare('DELETE FROM entries WHERE path = ?'),
      touch: db.prepare('UPDATE entries SET last_access = MAX(last_access, ?), hits = hits + ? WHERE path = ?'),
      lru: db.prepare('SELECT * FROM entries ORDER BY last_access ASC, path ASC LIMIT ?'),
      totals: db.prepare('SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes, COALESCE(SUM(hits), 0) AS hits FROM entries'),
      all: db.prepare('SELECT * FROM entries ORDER BY path'),
    };
  }

  /**
   * Opens (creating or migrating) the index at `file`. If it cannot be read as a
   * database of ours, it is renamed to `file.corrupt-<time>` and a new one is made.
   */
  static open(file: string, log: Logger, options: { readonly?: boolean } = {}): StoreIndex {
    if (options.readonly) return new StoreIndex(new Database(file, { readonly: true, fileMustExist: true }));
    try {
      return new StoreIndex(StoreIndex.openChecked(file), file);
    } catch (err) {
      return StoreIndex.rebuild(file, log, `${file} is unreadable (${(err as Error).message})`);
    }
  }

  /**
   * Moves the index at `file` (and its -wal and -shm) aside to `file.corrupt-<time>` and
   * makes a new, empty one: the store is a cache, so losing rows costs refills only.
   * The caller has closed its connection to the old one (a -wal left beside a new
   * database would be replayed into it).
   */
  static rebuild(file: string, log: Logger, reason: string): StoreIndex {
    const aside = `${file}.corrupt-${Date.now()}`;
    log.warn(`index ${reason}; moved aside to ${aside} and rebuilt`);
    for (const suffix of ['', '-wal', '-shm']) {
      try {
        fs.renameSync(file + suffix, aside + suffix);
      } catch {
        // a missing -wal or -shm is normal (and the index itself when it was deleted)
      }
    }
    try {
      StoreIndex.pruneAside(file);
    } catch (err) {
      log.warn(`old indexes beside ${file} not pruned: ${(err as Error).message}`);
    }
    return new StoreIndex(StoreIndex.openChecked(file), file);
  }

  /** Keeps the newest KEPT_ASIDE indexes moved aside (for a look at what broke), so that repeated trouble cannot fill the flash. */
  private static pruneAside(file: string): void {
    const dir = path.dirname(file);
    const prefix = `${path.basename(file)}.corrupt-`;
    const times = [...new Set(fs.readdirSync(dir).filter((n) => n.startsWith(prefix)).map((n) => parseInt(n.slice(prefix.length), 10)))]
      .filter((t) => Number.isFinite(t))
      .sort((a, b) => b - a);
    for (const t of times.slice(KEPT_ASIDE)) {
      for (const suffix of ['', '-wal', '-shm']) fs.rmSync(path.join(dir, `${prefix}${t}${suffix}`), { force: true });
    }
  }

  /**
   * Why the index file is no longer the database this connection uses, or undefined.
   * SQLite serves rows from its page cache and may not notice for a long time that
   * its file was deleted, replaced or overwritten: checked from outside, cheaply (a
   * stat and the 100-byte header), at every flush.
   */
  trouble(): string | undefined {
    if (!this.file || !this.opened) return undefined;
    let st: fs.Stats;
    try {
      st = fs.statSync(this.file);
    } catch (err) {
      return `${this.file} is gone (${errnoCode(err) ?? err})`;
    }
    if (st.dev !== this.opened.dev || st.ino !== this.opened.ino) return `${this.file} was replaced by another file`;
    if (st.size === 0) return undefined; // nothing checkpointed into it yet
    const header = Buffer.alloc(100);
    const fd = fs.openSync(this.file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    let n: number;
    try {
      n = fs.readSync(fd, header, 0, 100, 0);
    } finally {
      fs.closeSync(fd);
    }
    // The magic, WAL read/write versions (2, 2) and the fixed payload fractions (64, 32, 32).
    const ours = n === 100 && header.subarray(0, 16).equals(SQLITE_MAGIC) && header[18] === 2 && header[19] === 2 &&
      header[21] === 64 && header[22] === 32 && header[23] === 32;
    return ours ? undefined : `${this.file} was overwritten (its header is not an SQLite WAL database's)`;
  }

  private static openChecked(file: string): Database.Database {
    // The index names every cached path and the hash of files that may be 0600: root only,
    // created so (umask) and fixed on installs made before (finding 8 of issue 14).
    const umask = process.umask(0o077);
    let db: Database.Database;
    try {
      db = new Database(file);
    } finally {
      process.umask(umask);
    }
    try {
      for (const suffix of ['', '-wal', '-shm']) restrictMode(file + suffix);
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      const check = db.pragma('quick_check', { simple: true });
      if (check !== 'ok') throw new Error(`quick_check: ${String(check)}`);
      const version = Number(db.pragma('user_version', { simple: true }));
      if (version > SCHEMA_VERSION) throw new Error(`schema version ${version} is newer than this fscache (${SCHEMA_VERSION})`);
      db.transaction(() => {
        for (let v = version; v < SCHEMA_VERSION; v++) db.exec(MIGRATIONS[v]);
        db.pragma(`user_version = ${SCHEMA_VERSION}`);
      })();
      // The -wal and -shm exist now (WAL mode): SQLite gives them the database's mode, checked anyway.
      for (const suffix of ['-wal', '-shm']) restrictMode(file + suffix);
      return db;
    } catch (err) {
      db.close();
      throw err;
    }
  }

  get(path: string): IndexEntry | undefined {
    const row = this.stmt.get.get(path) as Row | undefined;
    return row && fromRow(row);
  }

  put(entry: IndexEntry): void {
    this.stmt.put.run({ ...entry, dev: entry.dev, ino: entry.ino, size: entry.size, mtimeNs: entry.mtimeNs, ctimeNs: entry.ctimeNs ?? null, hits: entry.hits });
  }

  remove(path: string): void {
    this.pendingAccess.delete(path);
    this.stmt.remove.run(path);
  }

  /** Remembers a use; written with the next flush, not per read. */
  recordAccess(path: string, hit: boolean, at = Date.now()): void {
    const pending = this.pendingAccess.get(path);
    if (pending) {
      pending.at = at;
      pending.hits += hit ? 1 : 0;
    } else {
      this.pendingAccess.set(path, { at, hits: hit ? 1 : 0 });
    }
  }

  /** Writes the batched access times and hit counts in one transaction. */
  flushAccess(): void {
    if (this.pendingAccess.size === 0) return;
    const batch = this.pendingAccess;
    this.pendingAccess = new Map();
    this.db.transaction(() => {
      for (const [path, { at, hits }] of batch) this.stmt.touch.run(at, hits, path);
    })();
  }

  leastRecentlyUsed(limit: number): IndexEntry[] {
    return (this.stmt.lru.all(limit) as Row[]).map(fromRow);
  }

  totals(): { entries: number; bytes: number; hits: number } {
    const t = this.stmt.totals.get() as { n: bigint; bytes: bigint; hits: bigint };
    return { entries: Number(t.n), bytes: Number(t.bytes), hits: Number(t.hits) };
  }

  all(): IndexEntry[] {
    return (this.stmt.all.all() as Row[]).map(fromRow);
  }

  close(): void {
    try {
      this.flushAccess();
    } finally {
      this.db.close();
    }
  }
}
