/**
 * Where the loader hook's state lives (R/run/fscache and the images directory): a module of its own
 * so that the supervisor can watch the daemon without loading the randomizer.
 */
import * as path from 'path';
import type { RealIdentity } from '../core/identity';
import type { Paths } from '../core/paths';

export interface HookPaths {
  /** R/fscache/images */
  images: string;
  /** R/run/fscache/epoch: the hook's only configuration. */
  epochFile: string;
  /** R/run/fscache/hook.sock */
  socket: string;
  pidFile: string;
  logFile: string;
  /** The daemon's last failures (JSON list of HookFailure). */
  failuresFile: string;
  /** The daemon's refusals, bounded (refusals.ts). */
  refusalsFile: string;
}

export function hookPaths(paths: Paths): HookPaths {
  // audit.c looks for R/run/fscache/{epoch,hook.sock}: the hook works with the default run_dir only.
  return {
    images: paths.images,
    epochFile: path.join(paths.runDir, 'epoch'),
    socket: path.join(paths.runDir, 'hook.sock'),
    pidFile: path.join(paths.runDir, 'hook-daemon.pid'),
    logFile: path.join(paths.runDir, 'hook-daemon.log'),
    failuresFile: path.join(paths.runDir, 'hook-failures.json'),
    refusalsFile: path.join(paths.runDir, 'hook-refusals.json'),
  };
}

/**
 * The name of a library's image and pass marker in an epoch's directory: the identity of the real
 * tree's file (dev, ino, size, mtime ns, in hex, joined by '-'), exactly as audit.c computes it.
 */
export function keyOf(id: RealIdentity): string {
  return [id.dev, id.ino, id.size, id.mtimeNs].map((v) => v.toString(16)).join('-');
}
