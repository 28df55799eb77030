/**
 * Reports changes of the real tree to its listener (fs/view/freshness.ts, which decides what each
 * one sets off): an event source that knows no store, cache or session.
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
import type { Config } from '../../core/config';
import { errnoCode } from '../../core/errors';
import type { Logger } from '../../core/log';
import type { Paths } from '../../core/paths';
import { InodeKey, inodeKey } from './vouched-meta';

export interface WatcherState {
  state: 'off' | 'watching' | 'capped' | 'failed';
  directories: number;
  packageDbs: string[];
  /** Why watching is incomplete (inotify limits, cap reached). */
  trouble?: string;
}

/** What the watcher reports (fs/view/freshness.ts). */
export interface ChangeListener {
  /** A real path (absolute) changed; `subtree` when it is or was a watched directory; `inode`: what the name is now, if a file. */
  changed(absPath: string, subtree: boolean, inode?: InodeKey): void;
  /** The watch on `dir` broke: nothing it vouched for can be trusted any more. */
  watchLost(dir: string): void;
  /** A package database changed (an install or upgrade); `settled` once it has been quiet for 300 ms. */
  packageOperation(settled: boolean): void;
  /** The names known for a file (all its hard links the view has answered for). */
  namesOf(inode: InodeKey): string[];
}

export class Watcher {
  readonly status: WatcherState = { state: 'off', directories: 0, packageDbs: [] };
  private readonly dirs = new Map<string, fs.FSWatcher>();
  /** Files with other hard links, watched by inode (watchInode). */
  private readonly inodes = new Map<InodeKey, fs.FSWatcher>();
  private packageWatcher?: ChokidarWatcher;
  private revalidateTimer?: NodeJS.Timeout;
  /** No new watches after the kernel refused one (inotify limits). */
  private refusing = false;
  listener?: ChangeListener;

  constructor(
    private readonly paths: Paths,
    private readonly config: Config,
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
      this.listener?.watchLost(dir);
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
    for (const name of this.listener?.namesOf(key) ?? []) this.listener?.changed(name, false, key);
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
    this.listener?.changed(changed, subtree, inode);
  }

  private onPackageChange(): void {
    this.listener?.packageOperation(false);
    clearTimeout(this.revalidateTimer);
    this.revalidateTimer = setTimeout(() => this.listener?.packageOperation(true), 300);
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
