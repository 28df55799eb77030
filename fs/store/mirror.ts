/**
 * Mirror mode's mount: the full copy on flash (R/fscache/mirror, kept by `fscache sync`) is
 * bound read-only at the view's mount point, R/usr.view, and R/usr points there.
 *  - Read-only: nothing is written through /usr into the copy (EROFS), where an install
 *    would land on flash only and the next sync would delete it. Package managers write to
 *    the real tree, with R/usr switched to it.
 *  - A bind mount does not outlive a power cut: R/usr.view is then its links to the real
 *    tree (fs/view/view-dir.ts), so a boot without fscache (or without the flash card) uses
 *    the real tree.
 * mount(8) and umount(8) are run by absolute path (fs/service/programs.ts) and only while R/usr
 * points at the real tree: their loader and libraries come through R/usr.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import { FsCacheError } from '../../core/errors';
import { readLinkState, switchLink } from '../switch/link';
import type { Logger } from '../../core/log';
import { isFuse, mountAt } from '../../core/mounts';
import type { Paths } from '../../core/paths';
import { programPath } from '../service/programs';
import { mirrorKnownComplete, mirrorProblem } from './sync';
import { refreshViewDir } from '../view/view-dir';

/** Whether something other than a FUSE view (the mirror's bind) is mounted at the view's mount point. */
export function mirrorMounted(paths: Paths): boolean {
  const top = mountAt(paths.viewMount);
  return !!top && !isFuse(top);
}

function run(paths: Paths, program: string, args: string[]): void {
  try {
    execFileSync(programPath(paths, program), args, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 10000 });
  } catch (err) {
    const stderr = String((err as { stderr?: Buffer }).stderr ?? '').trim();
    throw new FsCacheError('environment', `${program} ${args.join(' ')} failed: ${stderr || (err as Error).message}`);
  }
}

function bindReadOnly(paths: Paths): void {
  // Trust only root-owned state: what is bound here becomes /usr.
  const st = fs.lstatSync(paths.mirror);
  if (!st.isDirectory() || st.uid !== 0 || (st.mode & 0o022) !== 0) {
    throw new FsCacheError('refused', `the mirror ${paths.mirror} must be a directory owned by root and writable by root only`);
  }
  run(paths, 'mount', ['--bind', paths.mirror, paths.viewMount]);
  // A bind takes the source's flags; read-only takes a remount of the bind itself.
  run(paths, 'mount', ['-o', 'remount,bind,ro', paths.viewMount]);
  if (!mountAt(paths.viewMount)?.options.includes('ro')) {
    run(paths, 'umount', ['-l', paths.viewMount]);
    throw new FsCacheError('environment', `the mirror could not be bound read-only at ${paths.viewMount}; ${paths.usrLink} stays on the real tree`);
  }
}

/** `fscache start` in mirror mode; returns the line to print. */
export async function startMirror(paths: Paths, log: Logger): Promise<string> {
  if (isFuse(mountAt(paths.viewMount))) {
    throw new FsCacheError('busy', `the FUSE view is mounted at ${paths.viewMount}: run 'fscache stop' before starting in mirror mode`);
  }
  // Compared with the whole real tree unless its file system proves it unchanged since the last sync.
  const known = mirrorKnownComplete(paths);
  if (known) log.info(`${known}: the mirror is served without comparing it`);
  const problem = known ? undefined : await mirrorProblem(paths, log);
  if (problem) {
    // Never stale: a mirror that no longer equals the real tree is not served.
    stopMirror(paths);
    throw new FsCacheError('refused', `${problem}; ${paths.usrLink} stays on the real tree`);
  }
  const { state } = readLinkState(paths, 'mirror');
  if (mirrorMounted(paths) && state === 'mirror') return `already started (mirror): ${paths.usrLink} -> ${fs.readlinkSync(paths.usrLink)}`;
  if (!mirrorMounted(paths)) {
    // After a power cut the link may still lead to the (unmounted) mount point: mount(8) runs from the real tree.
    if (state !== 'real') switchLink(paths, 'real');
    refreshViewDir(paths);
    bindReadOnly(paths);
  }
  switchLink(paths, 'mirror');
  return `started (mirror): ${paths.usrLink} -> ${fs.readlinkSync(paths.usrLink)} (the mirror, read-only${known ? '; not compared: ' + known : ''})`;
}

/** `fscache stop` in mirror mode: the link to the real tree first, then a lazy unmount (running programs keep their files). */
export function stopMirror(paths: Paths): string {
  const { state } = readLinkState(paths, 'mirror');
  if (state === 'mirror') switchLink(paths, 'real');
  const mounted = mirrorMounted(paths);
  if (mounted) run(paths, 'umount', ['-l', paths.viewMount]);
  return state === 'mirror' || mounted ? `stopped (mirror): ${paths.usrLink} -> ${fs.readlinkSync(paths.usrLink)}` : 'already stopped';
}
