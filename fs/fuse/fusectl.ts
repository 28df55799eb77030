/**
 * Ending a FUSE mount without touching it. A stat or readdir of a hung view's mount point
 * blocks for good, and a process waiting on a request the view already read ignores
 * SIGKILL; only the kernel's fusectl filesystem frees them. It names each connection by
 * the minor device number of its mount, read here from /proc/self/mountinfo and never
 * from a stat; writing to the connection's `abort` file ends every pending and future
 * request with an error (ECONNABORTED, then ENOTCONN), and the mount becomes a dead one
 * that a lazy unmount removes.
 */
import { execFile, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { errnoCode } from '../../core/errors';
import { isFuse, mountAt, MountEntry, mountTable } from '../../core/mounts';
import type { Paths } from '../../core/paths';
import { findProgram } from '../service/programs';

export const FUSECTL_DIR = '/sys/fs/fuse/connections';

export interface FuseMount {
  mountPoint: string;
  /** The fusectl connection number: the minor device number of the mount. */
  minor: number;
}

function asFuseMount(m: MountEntry | undefined): FuseMount | undefined {
  return m && isFuse(m) ? { mountPoint: m.mountPoint, minor: Number(m.device.split(':')[1]) } : undefined;
}

/** The FUSE mount at `mountpoint` (the topmost if several are stacked there), or undefined. */
export function fuseMountAt(mountpoint: string): FuseMount | undefined {
  return asFuseMount(mountAt(mountpoint));
}

/** Every FUSE mount at or below `dir`. */
export function fuseMountsBelow(dir: string): FuseMount[] {
  const base = path.resolve(dir);
  return mountTable().filter((m) => m.mountPoint === base || m.mountPoint.startsWith(base + '/')).flatMap((m) => asFuseMount(m) ?? []);
}

/** Mounts fusectl if it is not mounted (a Debian system does not by default). Returns a problem, or undefined. */
export function ensureFusectl(paths: Paths): string | undefined {
  if (mountTable().some((m) => m.mountPoint === FUSECTL_DIR && m.fstype === 'fusectl')) return undefined;
  const mount = findProgram(paths, 'mount');
  if (!mount) return `fusectl is not mounted at ${FUSECTL_DIR} and no mount program was found in ${paths.realTree}`;
  const r = spawnSync(mount, ['-t', 'fusectl', 'fusectl', FUSECTL_DIR], { stdio: 'ignore', timeout: 5000 });
  return r.status === 0 ? undefined : `mounting fusectl at ${FUSECTL_DIR} failed (${r.error?.message ?? `exit ${r.status}`})`;
}

/** Aborts the FUSE connection with this minor number. False if it is already gone. */
export function abortConnection(minor: number): boolean {
  try {
    fs.writeFileSync(path.join(FUSECTL_DIR, String(minor), 'abort'), '1');
    return true;
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return false;
    throw err;
  }
}

function run(file: string, args: string[], timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => execFile(file, args, { timeout: timeoutMs, killSignal: 'SIGKILL' }, (err) => resolve(!err)));
}

/**
 * Lazily unmounts `mountpoint` (the name goes, users keep what they opened) with umount or
 * fusermount from the real tree, bounded. -c: umount does not canonicalize (stat) the path.
 */
export async function lazyDetach(paths: Paths, mountpoint: string, timeoutMs = 3000): Promise<boolean> {
  const umount = findProgram(paths, 'umount');
  if (umount && (await run(umount, ['-l', '-c', mountpoint], timeoutMs))) return true;
  const fusermount = findProgram(paths, 'fusermount');
  return !!fusermount && (await run(fusermount, ['-uz', mountpoint], timeoutMs));
}

/**
 * Aborts the connection of the FUSE mount at `mountpoint`, if any, mounting fusectl first
 * if needed. Returns what it did, for the log.
 */
export function abortMount(paths: Paths, mountpoint: string): string {
  const mount = fuseMountAt(mountpoint);
  if (!mount) return 'nothing mounted';
  const problem = ensureFusectl(paths);
  if (problem) return `connection ${mount.minor} not aborted (${problem})`;
  try {
    return abortConnection(mount.minor) ? `connection ${mount.minor} aborted` : `connection ${mount.minor} already gone`;
  } catch (err) {
    return `connection ${mount.minor} not aborted (${(err as Error).message})`;
  }
}

/**
 * Ends whatever FUSE mount is at `mountpoint`: aborts its connection (so that nothing
 * waits on it any more), then detaches it lazily.
 */
export async function abortAndDetach(paths: Paths, mountpoint: string): Promise<string> {
  if (!fuseMountAt(mountpoint)) return 'nothing mounted';
  const aborted = abortMount(paths, mountpoint);
  return `${aborted}; ${(await lazyDetach(paths, mountpoint)) ? 'detached' : 'lazy unmount failed'}`;
}
