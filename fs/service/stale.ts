/**
 * What a dead supervisor or a killed view leaves at the mount point, and how start, stop
 * and the supervisor clear it before a view is mounted: a view still running without
 * its supervisor is told to detach (as on stop: it serves its last users, then exits);
 * one that has not detached after a grace period is hung, and so is ended like a dead
 * mount: its connection aborted through fusectl, its mount detached lazily. Nothing
 * here touches the mount point itself.
 */
import * as fs from 'fs';
import { errnoCode, FsCacheError } from '../../core/errors';
import { abortAndDetach, fuseMountAt } from '../fuse/fusectl';
import type { Logger } from '../../core/log';
import type { Paths } from '../../core/paths';
import type { ViewState } from '../view/view-service';

/**
 * kill(pid, 0), where EPERM means the process exists but is not ours (status run as
 * non-root); a zombie (killed, not yet reaped by init) is dead.
 */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if (errnoCode(err) !== 'EPERM') return false;
  }
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch (err) {
    // Gone meanwhile; without /proc mounted, trust kill(2).
    return errnoCode(err) !== 'ENOENT' || !fs.existsSync('/proc/self/stat');
  }
}

export function readViewState(paths: Paths): ViewState | undefined {
  try {
    return JSON.parse(fs.readFileSync(paths.viewState, 'utf8')) as ViewState;
  } catch {
    return undefined;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The live view at the mount point, if any (a detached, draining view is not there any more). */
function liveView(paths: Paths): ViewState | undefined {
  const view = readViewState(paths);
  return fuseMountAt(paths.viewMount) && view && !view.detached && processAlive(view.pid) ? view : undefined;
}

/**
 * Refuses to clear a view that is not a dead supervisor's: one whose supervisor runs, or
 * one run by hand (`fscache mount`) unless `stopByHand` (start must not end what an
 * administrator started; stop may).
 */
export function checkMayClear(paths: Paths, stopByHand: boolean): void {
  const live = liveView(paths);
  const sup = live?.supervisorPid;
  if (live && sup && sup !== process.pid && processAlive(sup)) {
    throw new FsCacheError('busy', `${paths.viewMount} is served by view pid ${live.pid} of supervisor pid ${sup}, which is running`);
  }
  if (live && !sup && !stopByHand) {
    throw new FsCacheError('busy', `${paths.viewMount} is mounted by a view started by hand (pid ${live.pid}, 'fscache mount'); stop it first`);
  }
}

/** Clears the view's mount point (see the header); refuses as checkMayClear does. */
export async function clearMountPoint(paths: Paths, log: Logger, options: { graceMs?: number; stopByHand?: boolean } = {}): Promise<void> {
  if (!fuseMountAt(paths.viewMount)) return;
  checkMayClear(paths, !!options.stopByHand);
  const live = liveView(paths);
  if (live) {
    log.info(`the view pid ${live.pid} runs without its supervisor: telling it to detach`);
    process.kill(live.pid, 'SIGTERM');
    const deadline = Date.now() + (options.graceMs ?? 2000);
    while (fuseMountAt(paths.viewMount) && Date.now() < deadline) await sleep(50);
  }
  if (!fuseMountAt(paths.viewMount)) return;
  // Hung (a live view that did not detach) or dead (no view): no user can be served by it.
  const done = await abortAndDetach(paths, paths.viewMount);
  if (live) {
    try {
      process.kill(live.pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
  }
  log.warn(`cleared ${live ? `the hung view pid ${live.pid}` : 'a dead mount'} at ${paths.viewMount}: ${done}`);
}
