/**
 * `fscache sync`: rsync (through execa) from the real tree to flash.
 * View mode: the cached subset (the files in the index) is brought up to date, and the
 * index takes the real file's current identity for each copy that rsync left equal to
 * it (same size and nanosecond mtime, rsync's own test). Mirror mode: the whole tree is
 * copied with --delete; a marker file records a complete sync, and is removed while one
 * runs, so a half-written mirror is never taken for a complete one. While it runs, R/usr
 * leads to the real tree (a mirror being rewritten is neither the old tree nor the new).
 * rsync's quick check cannot see a same-size rewrite within the mtime's granularity of the
 * copy (1 s on ext4 with small inodes): the files a sync copied while their mtime was that
 * recent are listed as racy (git's rule), and every later sync and compare checksums them.
 * rsync is run by absolute path (fs/service/programs.ts), never found through PATH.
 */
import { createHash } from 'crypto';
import execa from 'execa';
import * as fs from 'fs';
import * as path from 'path';
import type { Config } from '../../core/config';
import { FsCacheError } from '../../core/errors';
import { identityOf } from '../../core/identity';
import type { IndexEntry } from './index-db';
import { readLinkState, switchLink } from '../switch/link';
import type { Logger } from '../../core/log';
import { isFuse, mountAt } from '../../core/mounts';
import { isPaused } from '../switch/pause';
import type { Paths } from '../../core/paths';
import { programPath } from '../service/programs';
import { readTrustedFile } from '../../core/trust';
import { writeAtomic } from '../../core/write-atomic';
import { currentMirrorImages, rsyncExcludes } from './mirror-images';
import { sameStamp, WriteStamp, writeStamp } from './write-stamp';

export interface SyncOptions {
  dryRun: boolean;
  /** Called with 0..100 as rsync reports progress; without it rsync is not asked to report. */
  onProgress?: (percent: number, detail: string) => void;
}

export interface SyncResult {
  mode: Config['mode'];
  /** Files rsync transferred (or would, with --dry-run). */
  transferred: number;
  deleted: number;
  /** View mode: index rows updated to the real file's identity, and rows dropped. */
  updated: number;
  dropped: number;
  rsyncExit: number;
  warning?: string;
}

const RSYNC_EXITS: Record<number, string> = {
  1: 'rsync: syntax or usage error (a bug in fscache)',
  3: 'rsync: cannot read the source or write the destination (check the real tree and the flash store)',
  11: 'rsync: file I/O error on the flash store or the real tree',
  12: 'rsync: data stream error',
  20: 'rsync was interrupted',
  22: 'rsync: out of memory',
  23: 'rsync: some files could not be transferred (see the log)',
  30: 'rsync: timeout',
};

export function mirrorMarker(paths: Paths): string {
  return path.join(paths.flash, 'mirror.complete');
}

/** Runs rsync, reporting progress, and turns its exit code into a clear error. */
async function rsync(paths: Paths, args: string[], options: SyncOptions, log: Logger, input?: string): Promise<{ exit: number; itemized: string[]; warning?: string }> {
  const child = execa(programPath(paths, 'rsync'), [...(options.onProgress ? ['--info=progress2'] : []), '--out-format=%i %n', ...args], {
    reject: false,
    all: false,
    buffer: false,
    input,
    // The C locale: rsync then writes every byte of a name outside printable ASCII as \#ooo (rsyncName).
    env: { LC_ALL: 'C' },
  });
  const itemized: string[] = [];
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-8192)));
  let pending = '';
  child.stdout!.on('data', (d: Buffer) => {
    pending += d.toString();
    const parts = pending.split(/[\r\n]/);
    pending = parts.pop() ?? '';
    for (const line of parts) {
      const progress = /^\s*[\d,]+\s+(\d+)%\s+(\S+)/.exec(line);
      if (progress) options.onProgress?.(Number(progress[1]), progress[2]);
      else if (/^[<>ch.*][fdLDS*]/.test(line) || line.startsWith('*deleting')) itemized.push(line);
    }
  });
  const { exitCode } = await child;
  if (exitCode === 0) return { exit: 0, itemized };
  if (exitCode === 24) {
    // Files that vanished from the real tree while rsync ran: the next sync sees the new state.
    const warning = 'some files vanished from the real tree during the sync (rsync 24); not an error';
    log.warn(warning);
    return { exit: 24, itemized, warning };
  }
  if (/No space left on device/.test(stderr)) throw new FsCacheError('degraded', `the flash store is full (rsync ${exitCode}): raise the space or lower what is synced`);
  const message = RSYNC_EXITS[exitCode] ?? `rsync failed with exit code ${exitCode}`;
  throw new FsCacheError('degraded', `${message}: ${stderr.trim().split('\n').slice(-2).join(' | ')}`);
}

export async function syncStore(paths: Paths, config: Config, log: Logger, options: SyncOptions): Promise<SyncResult> {
  if (!fs.existsSync(paths.realTree)) throw new FsCacheError('environment', `the real tree ${paths.realTree} is missing`);
  return config.mode === 'mirror' ? syncMirror(paths, log, options) : syncViewStore(paths, log, options);
}

async function syncMirror(paths: Paths, log: Logger, options: SyncOptions): Promise<SyncResult> {
  fs.mkdirSync(paths.mirror, { recursive: true, mode: 0o755 });
  const previousRacy = readRacy(paths);
  if (!options.dryRun) fs.rmSync(mirrorMarker(paths), { force: true });
  // The mirror's images of unchanged libraries stay (fs/store/mirror-images.ts).
  const excludes = rsyncExcludes(currentMirrorImages(paths));
  const dry = options.dryRun ? ['--dry-run'] : [];
  const args = ['-aHAX', '--delete', ...excludes.args, ...dry, `${paths.realTree}/`, `${paths.mirror}/`];
  const mounted = mountAt(paths.viewMount);
  const serving = !options.dryRun && !!mounted && !isFuse(mounted) && readLinkState(paths, 'mirror').state === 'mirror';
  // Launches meanwhile use the real tree; a failed sync leaves them there (fail open).
  if (serving) switchLink(paths, 'real');
  // The real tree's write stamp before and after: equal only if nothing wrote to it meanwhile (fs/store/write-stamp.ts).
  const before = writeStamp(paths.realTree);
  const startedAt = Date.now();
  const r = await rsync(paths, args, options, log, excludes.input);
  // The files racy at the last sync are compared by content: the quick check cannot see their rewrite.
  const r2 = await rsyncRacy(paths, previousRacy, [...excludes.args, ...dry], options, log, excludes.input);
  const itemized = [...r.itemized, ...(r2?.itemized ?? [])];
  if (!options.dryRun) {
    const after = writeStamp(paths.realTree);
    const stamp = 'none' in before || 'none' in after || !sameStamp(before, after) || r.exit !== 0 || (r2 && r2.exit !== 0) ? null : after;
    const copied = itemized.filter((l) => l[1] === 'f' && !l.startsWith('*')).map((l) => l.slice(l.indexOf(' ') + 1));
    // Before the marker: a complete marker is never paired with an older racy list.
    writeAtomic(mirrorRacyList(paths), [...new Set([...copied, ...previousRacy])].filter((n) => racySince(paths, n, startedAt)).map((n) => n + '\n').join(''), 0o600);
    writeAtomic(mirrorMarker(paths), JSON.stringify({ completedAt: Date.now(), rsyncExit: r.exit || r2?.exit || 0, realTree: stamp } satisfies MirrorMarker) + '\n', 0o644);
  }
  // A package transaction that paused meanwhile keeps R/usr on the real tree (its resume syncs and switches).
  if (serving && !isPaused(paths)) switchLink(paths, 'mirror');
  return {
    mode: 'mirror',
    transferred: itemized.filter((l) => /^[<>c]f/.test(l)).length,
    deleted: itemized.filter((l) => l.startsWith('*deleting')).length,
    updated: 0, dropped: 0, rsyncExit: r.exit || r2?.exit || 0, warning: r.warning ?? r2?.warning,
  };
}

/**
 * R/fscache/mirror.racy: the racy files of the last complete sync, one name a line as rsync
 * prints it. Apart from the marker: a package transaction's resume removes the marker, and
 * the sync that follows must still checksum the files racy before it. Bounded by the tree, and
 * each sync keeps only the files still racy: normally a few; after an install synced at once,
 * its files, hashed by the next compare or sync and then dropped.
 */
export function mirrorRacyList(paths: Paths): string {
  return path.join(paths.flash, 'mirror.racy');
}

/**
 * Beyond any file system's mtime granularity (FAT: 2 s) and the kernel's coarse clock lagging
 * Date.now(): a file whose mtime is this close to the start of a sync may be rewritten after
 * rsync read it and keep the same mtime (and size).
 */
const RACY_MARGIN_MS = 3000;

/** Whether the real tree's file `name` (as rsync prints it) is a regular file with an mtime too recent to trust the quick check. */
function racySince(paths: Paths, name: string, startedAt: number): boolean {
  try {
    const st = fs.lstatSync(Buffer.concat([Buffer.from(paths.realTree + '/'), rsyncName(name)]));
    return st.isFile() && st.mtimeMs >= startedAt - RACY_MARGIN_MS;
  } catch {
    return false; // gone: --delete took its copy
  }
}

/** A name as rsync prints it (\#ooo for a byte it cannot print, and for a backslash before #ddd) back to its bytes. */
function rsyncName(printed: string): Buffer {
  const parts = printed.split(/\\#([0-7]{3})/);
  return Buffer.concat(parts.map((p, i) => (i % 2 ? Buffer.from([parseInt(p, 8)]) : Buffer.from(p))));
}

/** The last complete sync's racy files; none if it recorded none (or ran before they were recorded). The list decides what is hashed: root's only. */
function readRacy(paths: Paths): string[] {
  return (readTrustedFile(paths.root, mirrorRacyList(paths)) ?? '').split('\n').filter(Boolean);
}

/** rsync --checksum over the racy files only (the same excludes: an image stays in its library's place); undefined if there are none. */
async function rsyncRacy(paths: Paths, racy: string[], args: string[], options: SyncOptions, log: Logger, input?: string) {
  if (!racy.length) return undefined;
  // A racy file since removed is --delete's (or the compare's) business.
  return rsyncListed(paths, paths.flash, racy.map(rsyncName), ['-aHAX', '--checksum', ...args, `${paths.realTree}/`, `${paths.mirror}/`], options, log, input);
}

/**
 * rsync over exactly `names` (relative, raw bytes: a name may hold any byte but NUL), given as a
 * NUL-separated --files-from list in a temporary file under `listDir`; names no longer in the
 * real tree are skipped (--ignore-missing-args).
 */
async function rsyncListed(paths: Paths, listDir: string, names: Buffer[], args: string[], options: SyncOptions, log: Logger, input?: string) {
  fs.mkdirSync(listDir, { recursive: true, mode: 0o700 });
  const list = path.join(listDir, `.sync-list-${process.pid}`);
  fs.rmSync(list, { force: true });
  // 'wx' creates, and never follows a planted link.
  fs.writeFileSync(list, Buffer.concat(names.flatMap((n) => [n, Buffer.from([0])])), { mode: 0o600, flag: 'wx' });
  try {
    return await rsync(paths, ['--from0', `--files-from=${list}`, '--ignore-missing-args', ...args], options, log, input);
  } finally {
    fs.rmSync(list, { force: true });
  }
}

async function syncViewStore(paths: Paths, log: Logger, options: SyncOptions): Promise<SyncResult> {
  // Loaded here: a mirror sync has no index and need not load SQLite.
  const { StoreIndex } = await import('./index-db');
  const index = StoreIndex.open(paths.index, log);
  try {
    const entries = index.all();
    // rsync's quick check compares size and mtime only, and a package's files carry their build's
    // mtime in whole seconds: the copy of a file since replaced (another inode) is removed first,
    // so that rsync copies the new file rather than the index taking the old copy for it.
    if (!options.dryRun) for (const e of entries) if (replacedSince(paths, e)) fs.rmSync(path.join(paths.store, e.path), { force: true });
    // A cached file removed from the real tree is dropped below.
    const r = await rsyncListed(paths, paths.storePartial, entries.map((e) => Buffer.from(e.path)),
      ['-a', ...(options.dryRun ? ['--dry-run'] : []), `${paths.realTree}/`, `${paths.store}/`], options, log);
    const transferred = r.itemized.filter((l) => /^[<>c]f/.test(l)).map((l) => rsyncName(l.slice(l.indexOf(' ') + 1)).toString());
    const result: SyncResult = { mode: 'view', transferred: transferred.length, deleted: 0, updated: 0, dropped: 0, rsyncExit: r.exit, warning: r.warning };
    if (options.dryRun) return result;
    const changed = new Set(transferred);
    for (const entry of entries) {
      let real: fs.BigIntStats | undefined;
      let copy: fs.BigIntStats | undefined;
      try {
        real = fs.lstatSync(path.join(paths.realTree, entry.path), { bigint: true });
        copy = fs.lstatSync(path.join(paths.store, entry.path), { bigint: true });
      } catch {
        real = undefined;
      }
      // A ctime changed without rsync copying (mtime restored, same size): the copy may hold other bytes.
      if (!real || !copy || !real.isFile() || real.size !== copy.size || real.mtimeNs !== copy.mtimeNs ||
        (!changed.has(entry.path) && real.ctimeNs !== entry.ctimeNs)) {
        fs.rmSync(path.join(paths.store, entry.path), { force: true });
        index.remove(entry.path);
        result.dropped++;
        continue;
      }
      const identity = identityOf(real);
      const hash = changed.has(entry.path) ? createHash('sha256').update(fs.readFileSync(path.join(paths.store, entry.path))).digest('hex') : entry.hash;
      if (changed.has(entry.path) || identity.ino !== entry.ino || identity.dev !== entry.dev || identity.mtimeNs !== entry.mtimeNs) {
        index.put({ ...entry, ...identity, ctimeNs: real.ctimeNs, hash, filledAt: Date.now() });
        result.updated++;
      }
    }
    return result;
  } finally {
    index.close();
  }
}

function replacedSince(paths: Paths, entry: IndexEntry): boolean {
  try {
    return fs.lstatSync(path.join(paths.realTree, entry.path), { bigint: true }).ino !== entry.ino;
  } catch {
    return false; // gone: dropped below
  }
}

interface MirrorMarker {
  completedAt: number;
  rsyncExit: number;
  /** The real tree's write stamp during the sync, if its file system can prove it unchanged since. */
  realTree: WriteStamp | null;
}

/**
 * Mirror mode at boot: why the mirror is known equal to the real tree without comparing them
 * (the real tree's file system unwritten since the last complete sync, fs/store/write-stamp.ts),
 * or undefined. The marker decides what is served: trusted only if root's alone.
 */
export function mirrorKnownComplete(paths: Paths): string | undefined {
  let marker: MirrorMarker;
  try {
    const text = readTrustedFile(paths.root, mirrorMarker(paths));
    if (text === undefined) return undefined;
    marker = JSON.parse(text) as MirrorMarker;
  } catch {
    return undefined;
  }
  const now = writeStamp(paths.realTree);
  if (!marker.realTree || 'none' in now || !sameStamp(marker.realTree, now)) return undefined;
  return `the real tree's file system (${now.fstype} ${now.device}) is read-only and unwritten since the last complete sync`;
}

/** Mirror mode: whether the copy on flash is complete and equal to the real tree now. */
export async function mirrorProblem(paths: Paths, log: Logger): Promise<string | undefined> {
  if (!fs.existsSync(mirrorMarker(paths))) return `the mirror ${paths.mirror} is missing or incomplete: run 'fscache sync'`;
  const excludes = rsyncExcludes(currentMirrorImages(paths));
  const r = await rsync(paths, ['-aHAX', '--delete', ...excludes.args, '--dry-run', `${paths.realTree}/`, `${paths.mirror}/`], { dryRun: true }, log, excludes.input);
  // A racy file rewritten in the second rsync copied it has the same size and mtime: compared by content.
  const racy = await rsyncRacy(paths, readRacy(paths), [...excludes.args, '--dry-run'], { dryRun: true }, log, excludes.input);
  const differences = [...r.itemized, ...(racy?.itemized ?? [])].filter((l) => !/^\.d/.test(l));
  if (differences.length) return `the mirror is older than the real tree (${differences.length} differences, e.g. ${differences[0]}): run 'fscache sync'`;
  return undefined;
}
