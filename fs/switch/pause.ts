/**
 * The pause of a package transaction. While R/run/fscache/paused exists, R/usr stays on
 * the real tree: a package manager writes there (the view and the mirror are read-only, and
 * a write into the mirror would be undone by the next sync), the supervisor does not switch
 * back to the view, and a mirror sync does not switch back to the mirror. The view stays
 * mounted meanwhile, so programs started from it keep running.
 *
 * The file names its holders (who paused, with pid and time): a transaction can nest
 * another (Portage merges the new version, then unmerges the old one, each with its own
 * pre and post hook), and R/usr goes back only when the last holder resumes. It lives in
 * the run directory (a tmpfs), so a reboot forgets a pause whose resume never came.
 */
import * as fs from 'fs';
import * as path from 'path';
import { errnoCode } from '../../core/errors';
import type { Paths } from '../../core/paths';
import { writeAtomic } from '../../core/write-atomic';

export interface PauseHolder {
  pid: number;
  /** ISO time the holder paused. */
  since: string;
}

export interface PauseState {
  /** Who keeps R/usr on the real tree, by name (`dpkg`, `portage:cat/pkg-1.0`, `manual`). */
  holders: Record<string, PauseHolder>;
  /** When the first holder paused (ms since the epoch): what changed since then is the transactions' work. */
  pausedAt: number;
  /** Where R/usr goes back to once the last holder resumes. */
  resumeTo: 'view' | 'mirror';
  /** The last resume that could not switch back, and why (mirror mode: the sync failed). */
  resumeFailure?: { at: string; reason: string };
}

export function pauseFile(paths: Paths): string {
  return path.join(paths.runDir, 'paused');
}

/**
 * The pause in force, or undefined. Honoured only when the file is a regular root-owned
 * file: anything else in its place (a symlink, a file another user managed to create) must
 * not keep R/usr off the cache, nor be read through; it is replaced by the next pause.
 */
export function readPause(paths: Paths): PauseState | undefined {
  let fd: number;
  try {
    fd = fs.openSync(pauseFile(paths), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ELOOP') return undefined;
    throw err;
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile() || st.uid !== 0) return undefined;
    const state = JSON.parse(fs.readFileSync(fd, 'utf8')) as Partial<PauseState>;
    return {
      holders: state.holders ?? {},
      pausedAt: typeof state.pausedAt === 'number' ? state.pausedAt : 0,
      resumeTo: state.resumeTo === 'mirror' ? 'mirror' : 'view',
      resumeFailure: state.resumeFailure,
    };
  } catch {
    // Unreadable content from a root-owned file: still a pause (fail open: the real tree), without holders.
    return { holders: {}, pausedAt: 0, resumeTo: 'view' };
  } finally {
    fs.closeSync(fd);
  }
}

/** The supervisor's question: is R/usr to stay on the real tree? */
export function isPaused(paths: Paths): boolean {
  return readPause(paths) !== undefined;
}

/** Writes the pause atomically (root-owned, 0644): the supervisor never sees half a file. */
export function writePause(paths: Paths, state: PauseState): void {
  fs.mkdirSync(paths.runDir, { recursive: true, mode: 0o755 });
  writeAtomic(pauseFile(paths), JSON.stringify(state, null, 2) + '\n', 0o644);
}

/** Ends the pause: R/usr may go back to the cache. */
export function clearPause(paths: Paths): void {
  fs.rmSync(pauseFile(paths), { force: true });
}
