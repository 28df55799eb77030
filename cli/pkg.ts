/**
 * `fscache pause` and `fscache resume`, run around a package transaction (by the hooks that
 * start installs, or by hand): R/usr on the real tree while a package manager writes, then
 * back on the cache with nothing undone. Both idempotent, one line of output, exit 0 when
 * fscache is not running. See fs/switch/pause.ts for the pause file and fs/switch/pkg-hooks.ts for the hooks.
 */
import * as fs from 'fs';
import { FsCacheError } from '../core/errors';
import { readLinkState, switchLink } from '../fs/switch/link';
import { mirrorMounted } from '../fs/store/mirror';
import { dropMirrorCopy, filesChangedSince } from '../fs/store/mirror-refresh';
import { clearPause, PauseState, readPause, writePause } from '../fs/switch/pause';
import { installPackageHooks, removePackageHooks } from '../fs/switch/pkg-hooks';
import { PROBE_DEADLINE_MS, PROBE_INTERVAL_MS, readSupervisorState } from '../fs/service/supervisor';
import { mirrorMarker, syncStore } from '../fs/store/sync';
import type { Context } from './context';

const out = (s: string): void => void process.stdout.write(s + '\n');

/**
 * How long resume waits for the supervisor to put R/usr back on the view. A libfuse2 view is
 * renewed first (a fresh view process, mounted and probed): 1-2 s idle, over 5 s seen in CI.
 */
const RESUME_WAIT_MS = 15000;
/** How long pause waits for the supervisor to see it: one tick and its probe's deadline. */
const PAUSE_ACK_MS = PROBE_INTERVAL_MS + PROBE_DEADLINE_MS + 500;
const CTIME_SLACK_MS = 2000;

export async function pauseVerb(ctx: Context, holder: string): Promise<void> {
  const { paths } = ctx;
  const { state } = readLinkState(paths, ctx.config.mode);
  const pause = readPause(paths);
  // Running: the link on the cache, a supervisor, or the mirror mounted (a sync has the link on the real tree meanwhile).
  if (!pause && state !== 'view' && state !== 'mirror' && !readSupervisorState(paths) && !mirrorMounted(paths)) {
    out('fscache is not running: nothing to pause');
    return;
  }
  // The file first, then the link: the supervisor must not switch back in between.
  writePause(paths, {
    holders: { ...pause?.holders, [holder]: { pid: process.ppid, since: new Date().toISOString() } },
    pausedAt: pause?.pausedAt ?? Date.now(),
    resumeTo: pause?.resumeTo ?? (ctx.config.mode === 'mirror' ? 'mirror' : 'view'),
  });
  if (state === 'view' || state === 'mirror') switchLink(paths, 'real');
  // The supervisor switches back only when a pause it has seen ends: a pause shorter than its
  // tick would leave R/usr on the real tree for good. Wait until it says it is paused.
  const sup = readSupervisorState(paths);
  if (sup?.state === 'serving') {
    const t0 = Date.now();
    while (readSupervisorState(paths)?.state === 'serving' && Date.now() - t0 < PAUSE_ACK_MS) await new Promise((r) => setTimeout(r, 50));
    if (readSupervisorState(paths)?.state === 'serving') out(`warning: the supervisor has not seen the pause within ${PAUSE_ACK_MS / 1000} s; after resume ${paths.usrLink} may stay on the real tree until it restarts the view`);
  }
  out(`paused (${holder}): ${paths.usrLink} -> real tree until 'fscache resume'`);
}

export async function resumeVerb(ctx: Context, holder: string | undefined): Promise<void> {
  const { paths } = ctx;
  const pause = readPause(paths);
  if (!pause) {
    out('not paused');
    return;
  }
  const holders = holder === undefined ? {} : { ...pause.holders };
  if (holder !== undefined) delete holders[holder];
  const others = Object.keys(holders);
  if (others.length) {
    writePause(paths, { ...pause, holders });
    out(`still paused by ${others.join(', ')}: ${paths.usrLink} stays on the real tree`);
    return;
  }
  if (pause.resumeTo === 'mirror') return resumeMirror(ctx, { ...pause, holders });
  clearPause(paths);
  if (!readSupervisorState(paths)) {
    out(`resumed; fscache is not running, ${paths.usrLink} stays on the real tree`);
    return;
  }
  // The supervisor switches back once it sees the pause gone and its probe of the view succeeds.
  const t0 = Date.now();
  while (readLinkState(paths, 'view').state !== 'view' && Date.now() - t0 < RESUME_WAIT_MS) await new Promise((r) => setTimeout(r, 50));
  if (readLinkState(paths, 'view').state === 'view') out(`resumed: ${paths.usrLink} -> view after ${Date.now() - t0} ms`);
  else out(`resumed; the supervisor has not switched ${paths.usrLink} back to the view within ${RESUME_WAIT_MS / 1000} s (${readSupervisorState(paths)?.state ?? 'no supervisor'}): it stays on the real tree until the view answers`);
}

/**
 * Mirror mode: the mirror is brought up to date with the transaction's changes before
 * R/usr goes back to it; if that fails, R/usr stays on the real tree (fail open) and the
 * pause stays, so that the next `fscache resume` tries again.
 */
async function resumeMirror(ctx: Context, pause: PauseState): Promise<void> {
  const { paths } = ctx;
  if (!mirrorMounted(paths)) {
    // `fscache stop` ran during the transaction: stopped it stays.
    clearPause(paths);
    out(`resumed; fscache is not running, ${paths.usrLink} stays on the real tree`);
    return;
  }
  // Still paused, by no one: a pause taken while the mirror is synced is seen below.
  writePause(paths, pause);
  let summary: string;
  try {
    // The mirror is incomplete from here until the sync has run (start refuses such a mirror).
    fs.rmSync(mirrorMarker(paths), { force: true });
    // ctime is kept by the kernel's coarse clock, which may lag Date.now() by a tick: a margin.
    let dropped = 0;
    for (const rel of filesChangedSince(paths.realTree, pause.pausedAt - CTIME_SLACK_MS)) if (dropMirrorCopy(paths.mirror, rel)) dropped++;
    ctx.log.debug(`resume: ${dropped} mirror copies of files changed during the pause dropped`);
    const r = await syncStore(paths, { ...ctx.config, mode: 'mirror' }, ctx.log, { dryRun: false });
    await (await import('./ops')).mirrorImages({ ...ctx, config: { ...ctx.config, mode: 'mirror' } });
    summary = `${r.transferred} files transferred, ${r.deleted} deleted`;
  } catch (err) {
    const reason = (err as Error).message;
    writePause(paths, { ...pause, holders: {}, resumeFailure: { at: new Date().toISOString(), reason } });
    throw new FsCacheError('degraded', `the mirror could not be brought up to date (${reason}); ${paths.usrLink} stays on the real tree; 'fscache resume' tries again`);
  }
  // A transaction that paused while the mirror was synced keeps R/usr on the real tree.
  const again = readPause(paths);
  if (again && Object.keys(again.holders).length) {
    out(`mirror synced (${summary}); paused again by ${Object.keys(again.holders).join(', ')}: ${paths.usrLink} stays on the real tree`);
    return;
  }
  clearPause(paths);
  if (!mirrorMounted(paths)) {
    out(`mirror synced (${summary}); fscache was stopped meanwhile, ${paths.usrLink} stays on the real tree`);
    return;
  }
  switchLink(paths, 'mirror');
  out(`resumed: ${paths.usrLink} -> mirror (${summary})`);
}

/** start: hooks for the package managers found under R. Fail open: start goes on without them. */
export function packageHooksOnStart(ctx: Context): void {
  const advice = "run 'fscache pause' before and 'fscache resume' after package transactions";
  try {
    const r = installPackageHooks(ctx.paths, ctx.configFile);
    if (r.problem) ctx.log.warn(`package-manager hooks not installed: ${r.problem}; ${advice}`);
    else if (r.installed.length) ctx.log.info(`package-manager hooks: ${r.installed.join(', ')}`);
  } catch (err) {
    ctx.log.warn(`package-manager hooks not installed: ${(err as Error).message}; ${advice}`);
  }
}

/**
 * stop: the hooks go. A pause stays: a transaction may still run, and its resume ends it (a
 * resume after stop goes back to nothing: view mode has no supervisor, the mirror is unmounted).
 */
export function packageHooksOnStop(ctx: Context): void {
  try {
    removePackageHooks(ctx.paths);
  } catch (err) {
    ctx.log.warn(`package-manager hooks not removed: ${(err as Error).message}`);
  }
}
