/**
 * Tells the view, the store and the FUSE session when the real tree changes.
 *
 * Directories are watched one by one with inotify (Node's fs.watch, not recursive):
 * the root of the real tree, every directory the view has looked something up in, and
 * the directories of cached files, at most watch_max_dirs. This is cheap: all 11,224
 * directories of this machine's /usr/lib cost 15 MiB and 0.75 s, where chokidar with
 * depth 0 took 700 MiB and 19 s (it stats every entry). fs.watch also says the exact
 * moment a watch is live (when it returns), which the vouched metadata relies on.
 * chokidar watches the package-manager databases, whose change (an install or upgrade)
 * re-checks every flash copy and forgets all vouched metadata.
 *
 * A file with other hard links is watched itself as well (an inotify watch is on the inode, so
 * it sees a write through any name, also one outside the real tree), within the same cap; the
 * directory watch would only see writes through names in that directory.
 *
 * Correctness never rests on the store's side of this: the identity check refuses a
 * stale copy anyway; the watcher frees stale copies early and invalidates caches.
 */
import chokidar, { FSWatcher as ChokidarWatcher } from 'chokidar';
import * as fs from 'fs';
import * as path from 'path';
import type { Config } from './config';
import { errnoCode } from './errors';
import type { Logger } from './log';
import type { Paths } from './paths';
import type { Store } from './store';
import { InodeKey, inodeKey } from './vouched-meta';

export interface WatcherState {
  state: 'off' | 'watching' | 'capped' | 'failed';
  directories: number;
  packageDbs: string[];
  /** Why watching is incomplete (inotify limits, cap reached). */
  trouble?: string;
  invalidations: number;
}

export class Watcher {
  readonly status: WatcherState = { state: 'off', directories: 0, packageDbs: [], invalidations: 0 };
  private readonly dirs = new Map<string, fs.FSWatcher>();
  /** Files with other hard links, watched by inode (watchInode). */
  private readonly inodes = new Map<InodeKey, fs.FSWatcher>();
  private packageWatcher?: ChokidarWatcher;
  private revalidateTimer?: NodeJS.Timeout;
  /** No new watches after the kernel refused one (inotify limits). */
  private refusing = false;
  /**
   * A real path (absolute) changed; `subtree` when it is or was a watched directory; `inode`: what
   * the name is now, if a file. Returns the other names of the same file, which changed with it.
   */
  onChange?: (absPath: string, subtree: boolean, inode?: InodeKey) => string[];
  /** The names known for a file (all its hard links the view has answered for). */
  namesOf?: (inode: InodeKey) => string[];
  /** Every cached metadata must be forgotten (package operation, lost watch). */
  onForgetAll?: () => void;
  /** Told of every changed path below the real tree, so the FUSE session can invalidate the kernel's cache. */
  onInvalidate?: (relPath: string) => void;

  constructor(
    private readonly paths: Paths,
    private readonly config: Config,
    private readonly store: Store | undefined,
    private readonly log: Logger,
  ) {}

  get active(): boolean {
    return this.status.state !== 'off';
  }

  start(): void {
    if (this.config.watch === 'off') return;
    this.status.state = 'watching';
    const dbs = this.config.watchPackageDb.map((db) => path.join(this.paths.root, db)).filter((d) => fs.existsSync(d));
    if (dbs.length) {
      this.status.packageDbs = dbs;
      this.packageWatcher = chokidar.watch(dbs, { depth: 0, ignoreInitial: true, followSymlinks: false });
      this.packageWatcher.on('all', () => this.onPackageChange());
      this.packageWatcher.on('error', (err) => this.onError(err));
    }
    this.watchDir(this.paths.realTree);
    for (const rel of this.store?.indexedPaths() ?? []) this.watchDir(path.dirname(path.join(this.paths.realTree, rel)));
  }

  isWatched(dir: string): boolean {
    return this.dirs.has(dir);
  }

  /**
   * Watches a directory of the real tree (absolute path) unless it is already watched;
   * true when it is watched when this returns: events for changes from now on will come.
   */
  watchDir(dir: string): boolean {
    if (this.dirs.has(dir)) return true;
    if (this.status.state === 'off' || this.refusing) return false;
    if (this.dirs.size >= this.config.watchMaxDirs) {
      if (this.status.state === 'watching') {
        this.status.state = 'capped';
        this.status.trouble = `watch_max_dirs (${this.config.watchMaxDirs}) reached: further directories are read from the real tree every time`;
        this.log.warn(this.status.trouble);
      }
      return false;
    }
    let watcher: fs.FSWatcher;
    try {
      watcher = fs.watch(dir, { persistent: false }, (_event, name) => this.onDirEvent(dir, name ? String(name) : undefined));
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ENOSPC' || code === 'EMFILE') this.onError(err);
      return false;
    }
    watcher.on('error', () => {
      this.unwatch(dir);
      this.onChange?.(dir, true);
      // The kernel may hold names this watch vouched for: they go too (all of them for the root).
      if (dir === this.paths.realTree) this.onForgetAll?.();
      else this.onInvalidate?.(path.relative(this.paths.realTree, dir));
    });
    this.dirs.set(dir, watcher);
    this.status.directories = this.dirs.size;
    return true;
  }

  /**
   * Watches the inode of `file` (a regular file with other hard links, lstat `st`); true when the
   * watch is live and the file is still `st`, so that every change from then on will be reported.
   */
  watchInode(file: string, st: fs.BigIntStats): boolean {
    const key = inodeKey(st);
    if (this.inodes.has(key)) return true;
    if (this.status.state === 'off' || this.refusing || this.dirs.size + this.inodes.size >= this.config.watchMaxDirs) return false;
    let watcher: fs.FSWatcher;
    try {
      watcher = fs.watch(file, { persistent: false }, () => this.onInodeEvent(key));
    } catch {
      return false;
    }
    // Changed between the caller's lstat and the watch: that change would never be reported.
    let now: fs.BigIntStats | undefined;
    try {
      now = fs.lstatSync(file, { bigint: true });
    } catch {
      now = undefined;
    }
    if (!now || inodeKey(now) !== key || now.ctimeNs !== st.ctimeNs) {
      watcher.close();
      return false;
    }
    watcher.on('error', () => {
      this.inodes.get(key)?.close();
      this.inodes.delete(key);
      this.onInodeEvent(key);
    });
    this.inodes.set(key, watcher);
    return true;
  }

  /** A file with other hard links changed (through any name): every name of it changed. */
  private onInodeEvent(key: InodeKey): void {
    for (const name of this.namesOf?.(key) ?? []) this.changed(name, false, key);
  }

  private unwatch(dir: string): void {
    this.dirs.get(dir)?.close();
    this.dirs.delete(dir);
    this.status.directories = this.dirs.size;
  }

  private onDirEvent(dir: string, name: string | undefined): void {
    const changed = name ? path.join(dir, name) : dir;
    // A renamed or removed directory: its watches now follow another name, or nothing.
    const below = changed + '/';
    let subtree = !name;
    for (const watched of [...this.dirs.keys()]) {
      if (name && (watched === changed || watched.startsWith(below))) {
        this.unwatch(watched);
        subtree = true;
      }
    }
    let inode: InodeKey | undefined;
    try {
      const st = fs.lstatSync(changed, { bigint: true });
      if (st.isFile()) inode = inodeKey(st);
    } catch {
      // removed: the name's old file is what was recorded for it
    }
    this.changed(changed, subtree, inode);
  }

  /** `changed` and every other name of the same file: forgotten, invalidated, copies dropped. */
  private changed(changed: string, subtree: boolean, inode?: InodeKey): void {
    const others = this.onChange?.(changed, subtree, inode) ?? [];
    for (const name of [changed, ...others]) {
      if (!name.startsWith(this.paths.realTree + '/')) continue;
      const relPath = path.relative(this.paths.realTree, name);
      this.onInvalidate?.(relPath);
      if (this.store?.has(relPath)) {
        this.store.drop(relPath);
        this.status.invalidations++;
        this.log.debug(`${relPath} changed: flash copy dropped`);
      }
    }
  }

  private onPackageChange(): void {
    this.onForgetAll?.();
    // Re-check every copy once the package operation settles.
    clearTimeout(this.revalidateTimer);
    this.revalidateTimer = setTimeout(() => {
      this.onForgetAll?.();
      const dropped = this.store?.revalidateAll() ?? [];
      this.status.invalidations += dropped.length;
      for (const relPath of dropped) this.onInvalidate?.(relPath);
      if (dropped.length) this.log.info(`package database changed: dropped ${dropped.length} stale copies`);
    }, 300);
  }

  private onError(err: unknown): void {
    const code = errnoCode(err);
    // ENOSPC from inotify_add_watch means fs.inotify.max_user_watches is exhausted.
    this.status.trouble =
      code === 'ENOSPC' || code === 'EMFILE'
        ? `inotify limit reached (${code}): raise fs.inotify.max_user_watches / max_user_instances; unwatched directories are read from the real tree every time`
        : `watcher error: ${(err as Error).message ?? err}`;
    this.status.state = 'failed';
    this.refusing = true;
    this.log.warn(this.status.trouble);
  }

  async stop(): Promise<void> {
    clearTimeout(this.revalidateTimer);
    for (const dir of [...this.dirs.keys()]) this.unwatch(dir);
    for (const w of this.inodes.values()) w.close();
    this.inodes.clear();
    await this.packageWatcher?.close();
    this.status.state = 'off';
  }
}
