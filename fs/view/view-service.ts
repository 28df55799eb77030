/**
 * Runs the view: preflight, index and store recovery, the FUSE session, the watcher,
 * periodic index flushes and the state file that `fscache status` reads.
 *
 * Stopping detaches the mount lazily and keeps serving until the kernel closes the
 * connection: a process that mapped a library through the view keeps faulting pages
 * in through it, and would die of SIGBUS if this process left first.
 */
import * as fs from 'fs';
import type { Config } from '../../core/config';
import { FsCacheError } from '../../core/errors';
import { StoreIndex } from '../store/index-db';
import type { Logger } from '../../core/log';
import { ServedImages } from '../../loader-hook/served-images';
import { supervisorPidFromEnv, watchSupervisor } from '../service/orphan-watch';
import type { Paths } from '../../core/paths';
import { checkFuseDevice, checkRealTree, prepareMountPoint } from '../service/preflight';
import type { FuseSession } from '../fuse/session';
import { programPath } from '../service/programs';
import { createSession } from '../fuse/sessions';
import { Store, StoreCounters } from '../store/store';
import { Freshness } from './freshness';
import { View, ViewCounters } from './view';
import { VouchedMeta } from './vouched-meta';
import { Watcher, WatcherState } from './watcher';
import { writeAtomic } from '../../core/write-atomic';

export interface ViewState {
  pid: number;
  startedAt: number;
  updatedAt: number;
  session: string;
  mountpoint: string;
  realTree: string;
  /** Why the view runs without flash copies, if it does. */
  storeTrouble?: string;
  view: ViewCounters;
  store?: StoreCounters & { bytes: number; quota: number };
  /** The watcher's state, and the copies dropped because their file changed. */
  watcher?: WatcherState & { invalidations: number };
  /** Randomized images served under the libraries' names (serve_images = on with the hook on). */
  images?: { epoch?: string; served: number; asked: number };
  requests: Record<string, number>;
  detached?: boolean;
  /** The supervisor that started this view; absent for `fscache mount` run by hand. */
  supervisorPid?: number;
}

export class RunningView {
  private flushTimer?: NodeJS.Timeout;
  private stopping?: Promise<void>;
  readonly startedAt = Date.now();
  private detached = false;
  private stopOrphanWatch = (): void => undefined;

  private constructor(
    private readonly paths: Paths,
    private readonly config: Config,
    private readonly log: Logger,
    readonly view: View,
    readonly session: FuseSession,
    readonly store: Store | undefined,
    readonly watcher: Watcher,
    private readonly freshness: Freshness,
    private readonly storeTrouble: string | undefined,
    readonly images: ServedImages | undefined,
  ) {}

  static async start(paths: Paths, config: Config, log: Logger): Promise<RunningView> {
    checkFuseDevice();
    checkRealTree(paths);
    if (config.mode !== 'view') throw new FsCacheError('usage', `mode is '${config.mode}': the FUSE view runs only in mode view`);
    prepareMountPoint(paths); // also refreshes the links to the real tree under the mount point

    let store: Store | undefined;
    let storeTrouble: string | undefined;
    try {
      Store.prepare(paths);
      fs.accessSync(paths.storePartial, fs.constants.W_OK);
      const index = StoreIndex.open(paths.index, log);
      store = new Store(paths, index, config, log);
      const recovered = store.recover();
      if (recovered.partial + recovered.droppedRows + recovered.orphans > 0) {
        log.info(`store recovered: ${recovered.partial} partial copies removed, ${recovered.droppedRows} rows without a whole copy dropped, ${recovered.orphans} copies without a row removed`);
      }
    } catch (err) {
      // Fail open: without a usable store the view still serves the real tree.
      storeTrouble = `flash store ${paths.flash} unusable (${(err as Error).message}); serving the real tree only`;
      log.warn(storeTrouble);
      store = undefined;
    }

    const watcher = new Watcher(paths, config, log);
    const meta = new VouchedMeta(config.watch === 'off' ? 0 : config.metadataTrustSeconds * 1000);
    // What a change sets off lives in Freshness, made once the session exists; images report to it.
    let freshness: Freshness | undefined;
    const images = config.hook === 'on' && config.serveImages === 'on'
      ? new ServedImages(paths, config, log, { path: (p) => freshness?.imageReady(p), epoch: () => freshness?.newEpoch() })
      : undefined;
    // A session whose nodes are paths cannot give a name a new node: what a path was answered as stays until renewal.
    const view = new View(paths.realTree, store, log, watcher, meta, images, config.fuseSession === 'libfuse2');
    const session = createSession(config.fuseSession, view, {
      mountpoint: paths.viewMount,
      attrTimeout: config.attrTimeout,
      entryTimeout: config.entryTimeout,
      negativeTimeout: config.negativeTimeout,
      fsname: 'fscache',
      program: (name) => programPath(paths, name),
      log,
    });
    freshness = new Freshness(paths, watcher, meta, session, store, log);
    freshness.start();
    await session.mount();
    images?.start();
    const running = new RunningView(paths, config, log, view, session, store, watcher, freshness, storeTrouble, images);
    running.flushTimer = setInterval(() => running.flush(), config.accessFlushMs);
    running.flush();
    running.stopOrphanWatch = watchSupervisor(paths, log);
    log.info(`view of ${paths.realTree} mounted at ${paths.viewMount} (session ${session.name})`);
    return running;
  }

  state(): ViewState {
    return {
      pid: process.pid,
      startedAt: this.startedAt,
      updatedAt: Date.now(),
      session: this.session.name,
      mountpoint: this.paths.viewMount,
      realTree: this.paths.realTree,
      storeTrouble: this.storeTrouble,
      view: { ...this.view.counters },
      store: this.store && { ...this.store.counters, bytes: this.store.bytes, quota: this.config.quotaBytes },
      watcher: this.watcher.active ? { ...this.watcher.status, invalidations: this.freshness.invalidations } : undefined,
      images: this.images && { epoch: this.images.currentEpoch, ...this.images.counters },
      requests: this.session.requestCounts(),
      detached: this.detached,
      supervisorPid: supervisorPidFromEnv(),
    };
  }

  /** Writes batched index updates and the state file. Never throws: the view must not die of it. */
  flush(): void {
    // Also checks the index file and rebuilds a broken one (the store fails open).
    this.store?.flush();
    try {
      writeAtomic(this.paths.viewState, JSON.stringify(this.state(), null, 2), 0o644);
    } catch (err) {
      this.log.warn(`state file ${this.paths.viewState} not written: ${err}`);
    }
  }

  /** Detaches the mount and resolves once the last user is gone and everything is written. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.log.info('stopping: detaching the view; serving until its last user is gone');
      this.stopOrphanWatch();
      this.images?.stop();
      await this.session.detach();
      this.detached = true;
      this.flush();
      await this.session.closed();
      clearInterval(this.flushTimer);
      await this.watcher.stop();
      await this.store?.stop();
      this.store?.close();
      fs.rmSync(this.paths.viewState, { force: true });
      this.log.info('view stopped');
    })();
    return this.stopping;
  }
}
