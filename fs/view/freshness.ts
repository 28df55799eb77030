/**
 * Never stale: what a change of the real tree sets off, in one place. The view's answers may come
 * from four caches, and each is told here:
 *
 * - the view's vouched memory (fs/view/vouched-meta.ts): the changed name, all other names of the
 *   same file (hard links), a changed directory's whole subtree;
 * - the kernel (the FUSE session): those names and their pages, so that the next lookup asks the
 *   view again (fs/fuse/session-kernel.ts; libfuse2 renews instead);
 * - the flash store (fs/store/store.ts): a copy of a changed file is dropped at once (its
 *   identity check would refuse it anyway at the next open: this frees it early);
 * - served images (loader-hook/served-images.ts): an image that became ready, or a new epoch.
 *
 * A package operation (its database changed) forgets everything the kernel and the view kept, and
 * once it settles re-checks every copy. What reports the changes is fs/view/watcher.ts; what keeps
 * the promise at each open whatever happens here is the identity check (fs/view/view.ts,
 * fs/store/store.ts): a copy is served only for the real file's exact identity now.
 */
import * as path from 'path';
import type { Logger } from '../../core/log';
import type { Paths } from '../../core/paths';
import type { FuseSession } from '../fuse/session';
import { requestRenewal } from '../service/orphan-watch';
import type { Store } from '../store/store';
import type { VouchedMeta, InodeKey } from './vouched-meta';
import type { ChangeListener, Watcher } from './watcher';

export class Freshness implements ChangeListener {
  /** A libfuse2 view asked its supervisor for a fresh view (a new epoch): once is enough. */
  private renewalAsked = false;
  /** Copies dropped because their file changed. */
  invalidations = 0;

  constructor(
    private readonly paths: Paths,
    private readonly watcher: Watcher,
    private readonly meta: VouchedMeta,
    private readonly session: FuseSession,
    private readonly store: Store | undefined,
    private readonly log: Logger,
  ) {
    watcher.listener = this;
    // A file with other hard links is vouched for only while its inode is watched too.
    meta.watchInode = (file, st) => watcher.watchInode(file, st);
    // A copy's directory is watched from its fill on, so that a change frees the copy early.
    if (store) store.onFilled = (rel) => watcher.watchDir(path.dirname(path.join(paths.realTree, rel)));
  }

  /** Starts watching: the real tree's root and the directories of every copy on flash. */
  start(): void {
    this.watcher.start();
    for (const rel of this.store?.indexedPaths() ?? []) this.watcher.watchDir(path.dirname(path.join(this.paths.realTree, rel)));
  }

  /** `abs` and every other name of the same file: forgotten, invalidated, copies dropped. */
  changed(abs: string, subtree: boolean, inode?: InodeKey): void {
    const others = this.meta.forget(abs, subtree, inode);
    for (const name of [abs, ...others]) {
      if (!name.startsWith(this.paths.realTree + '/')) continue;
      const relPath = path.relative(this.paths.realTree, name);
      this.session.invalidate('/' + relPath);
      if (this.store?.has(relPath)) {
        this.store.drop(relPath);
        this.invalidations++;
        this.log.debug(`${relPath} changed: flash copy dropped`);
      }
    }
  }

  watchLost(dir: string): void {
    this.meta.forget(dir, true);
    // The kernel may hold names this watch vouched for: they go too (all of them for the root).
    if (dir === this.paths.realTree) this.forgetAll();
    else this.session.invalidate('/' + path.relative(this.paths.realTree, dir));
  }

  packageOperation(settled: boolean): void {
    this.forgetAll();
    if (!settled) return;
    const dropped = this.store?.revalidateAll() ?? [];
    this.invalidations += dropped.length;
    for (const relPath of dropped) this.session.invalidate('/' + relPath);
    if (dropped.length) this.log.info(`package database changed: dropped ${dropped.length} stale copies`);
  }

  namesOf(inode: InodeKey): string[] {
    return this.meta.namesOf(inode);
  }

  /** The image of the library at view path `p` became ready: the kernel drops the name (a new node). */
  imageReady(p: string): void {
    // libfuse2 names nodes by path: what a path was answered as stays until the view is renewed.
    if (this.session.name === 'kernel') this.session.invalidate(p);
  }

  /** A new epoch: every name answered in the old one was told by imageReady; libfuse2 is renewed. */
  newEpoch(): void {
    // Once per view: a second request would only ask for the same fresh view again.
    if (this.session.name !== 'kernel' && !this.renewalAsked) this.renewalAsked = requestRenewal();
  }

  private forgetAll(): void {
    this.meta.forgetAll();
    this.session.invalidateAll();
  }
}
