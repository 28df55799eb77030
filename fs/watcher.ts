/**
 * Drops flash copies whose real file changed, within about a second.
 *
 * A /usr-sized tree cannot be watched whole cheaply (chokidar over this machine's
 * /usr/lib needs 237 MiB even for directories only), so the watcher watches, each
 * non-recursively, only the directories that hold cached files (at most
 * watch_max_dirs) and the package-manager databases, whose change re-checks every
 * copy. Correctness never rests on it: the identity check at open refuses a stale
 * copy anyway; the watcher frees stale copies early and keeps the index honest.
 */
import chokidar, { FSWatcher } from 'chokidar';
import * as fs from 'fs';
import * as path from 'path';
import type { Config } from './config';
import { errnoCode } from './errors';
import type { Logger } from './log';
import type { Paths } from './paths';
import type { Store } from './store';

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
  private watcher?: FSWatcher;
  private readonly dirs = new Set<string>();
  private revalidateTimer?: NodeJS.Timeout;
  /** Told of every real file whose copy was dropped, so the FUSE session can invalidate the kernel's cache. */
  onInvalidate?: (relPath: string) => void;

  constructor(
    private readonly paths: Paths,
    private readonly config: Config,
    private readonly store: Store,
    private readonly log: Logger,
  ) {}

  start(): void {
    if (this.config.watch === 'off') return;
    this.watcher = chokidar.watch([], {
      depth: 0,
      ignoreInitial: true,
      followSymlinks: false,
      persistent: true,
      // Events within a second: no write-finish polling, which would add its own delay.
      awaitWriteFinish: false,
    });
    this.watcher.on('all', (event, file) => this.onEvent(event, file));
    this.watcher.on('error', (err) => this.onError(err));
    this.status.state = 'watching';
    for (const db of this.config.watchPackageDb) {
      const dir = path.join(this.paths.root, db);
      if (fs.existsSync(dir)) {
        this.watcher.add(dir);
        this.status.packageDbs.push(dir);
      }
    }
    for (const entry of this.store.index.all()) this.watchFileDir(entry.path);
  }

  /** Watches the directory of a cached file (relative to the real tree). */
  watchFileDir(relPath: string): void {
    if (!this.watcher) return;
    const dir = path.dirname(path.join(this.paths.realTree, relPath));
    if (this.dirs.has(dir)) return;
    if (this.dirs.size >= this.config.watchMaxDirs) {
      if (this.status.state === 'watching') {
        this.status.state = 'capped';
        this.status.trouble = `watch_max_dirs (${this.config.watchMaxDirs}) reached: further directories rely on the identity check at open`;
        this.log.warn(this.status.trouble);
      }
      return;
    }
    this.dirs.add(dir);
    this.status.directories = this.dirs.size;
    this.watcher.add(dir);
  }

  private onEvent(event: string, file: string): void {
    if (this.status.packageDbs.some((db) => file.startsWith(db + '/') || file === db)) {
      // A package operation: re-check every copy once it settles.
      clearTimeout(this.revalidateTimer);
      this.revalidateTimer = setTimeout(() => {
        const dropped = this.store.revalidateAll();
        this.status.invalidations += dropped.length;
        for (const relPath of dropped) this.onInvalidate?.(relPath);
        if (dropped.length) this.log.info(`package database changed: dropped ${dropped.length} stale copies`);
      }, 300);
      return;
    }
    if (event !== 'change' && event !== 'unlink' && event !== 'add') return;
    const relPath = path.relative(this.paths.realTree, file);
    // Every change in a watched directory reaches the session (a new or replaced name too).
    this.onInvalidate?.(relPath);
    if (this.store.index.get(relPath)) {
      this.store.drop(relPath);
      this.status.invalidations++;
      this.log.debug(`${relPath} ${event}: copy dropped`);
    }
  }

  private onError(err: unknown): void {
    const code = errnoCode(err);
    // ENOSPC from inotify_add_watch means fs.inotify.max_user_watches is exhausted.
    this.status.trouble =
      code === 'ENOSPC' || code === 'EMFILE'
        ? `inotify limit reached (${code}): raise fs.inotify.max_user_watches / max_user_instances; freshness rests on the identity check at open`
        : `watcher error: ${(err as Error).message ?? err}`;
    this.status.state = 'failed';
    this.log.warn(this.status.trouble);
  }

  async stop(): Promise<void> {
    clearTimeout(this.revalidateTimer);
    await this.watcher?.close();
    this.status.state = 'off';
  }
}
