/**
 * Every path fscache uses, derived from one root prefix R and the config, so that
 * the whole system runs inside a sandbox directory in tests and the demo.
 */
import * as path from 'path';
import type { Config } from './config';

export interface Paths {
  root: string;
  /** R/usr: the symlink switched between the real tree and the view. */
  usrLink: string;
  /** R/usr.real: the real tree. The view reads only here, never through R/usr. */
  realTree: string;
  /** R/fscache: flash storage. */
  flash: string;
  /** R/fscache/store: cached file contents, laid out as in the real tree. */
  store: string;
  /** R/fscache/store/.partial: copies being written, renamed into place when complete. */
  storePartial: string;
  /** R/fscache/mirror: the full copy used in mirror mode. */
  mirror: string;
  /** R/fscache/images: randomized libraries, one directory per epoch. */
  images: string;
  index: string;
  runDir: string;
  /**
   * R/usr.view: where the view (or the read-only mirror) is mounted. Persistent, and under
   * the mount it holds links to the real tree's top-level entries (fs/view/view-dir.ts).
   */
  viewMount: string;
  viewState: string;
  log: string;
}

export function configFileFor(root: string): string {
  return path.join(root, 'etc', 'fscache.conf');
}

export function derivePaths(root: string, config: Config): Paths {
  const r = path.resolve(root);
  const flash = path.join(r, config.storeDir);
  const runDir = path.join(r, config.runDir);
  return {
    root: r,
    usrLink: path.join(r, config.usrLink),
    realTree: path.join(r, config.realTree),
    flash,
    store: path.join(flash, 'store'),
    storePartial: path.join(flash, 'store', '.partial'),
    mirror: path.join(flash, 'mirror'),
    images: path.join(flash, 'images'),
    index: path.join(flash, 'index.sqlite'),
    runDir,
    viewMount: path.join(r, config.viewDir),
    viewState: path.join(runDir, 'view.json'),
    log: path.join(runDir, 'fscache.log'),
  };
}
