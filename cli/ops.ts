/** The administrator's verbs: setup, start, stop, sync. */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { FsCacheError } from '../core/errors';
import { readLinkState, switchLink } from '../fs/switch/link';
import { fuseMountAt } from '../fs/fuse/fusectl';
import { mirrorMounted, startMirror, stopMirror } from '../fs/store/mirror';
import { selfCommand } from '../fs/service/self-command';
import { planSetup, refreshViewDirIfIdle, runSetup } from '../fs/switch/setup';
import { keepLogBounded } from '../core/log';
import { sdNotify } from '../fs/service/sd-notify';
import { checkMayClear, clearMountPoint, processAlive } from '../fs/service/stale';
import { readSupervisorRecord, readSupervisorState, Supervisor, supervisorStateFile } from '../fs/service/supervisor';
import { syncStore } from '../fs/store/sync';
import type { Context } from './context';
import { packageHooksOnStart, packageHooksOnStop } from './pkg';
import { writeAtomic } from '../core/write-atomic';

const out = (s: string): void => void process.stdout.write(s + '\n');

export function setupVerb(ctx: Context, yes: boolean): void {
  const plan = planSetup(ctx.paths);
  if (plan.done) {
    refreshViewDirIfIdle(ctx.paths);
    out(`already set up: ${ctx.paths.usrLink} is fscache's link`);
    return;
  }
  if (!yes) {
    throw new FsCacheError('refused', `setup would:\n${plan.steps.map((s) => `  - ${s}`).join('\n')}\nrun 'fscache setup --yes' to do it (from a rescue shell or early boot: nothing may be running from ${ctx.paths.usrLink})`);
  }
  runSetup(ctx.paths);
  out(`set up: ${ctx.paths.usrLink} -> ${fs.readlinkSync(ctx.paths.usrLink)}`);
}

/** The link must be ours before start touches anything. */
function checkLinkIsOurs(ctx: Context): void {
  const { state, target } = readLinkState(ctx.paths);
  if (state === 'directory') {
    throw new FsCacheError('refused', `${ctx.paths.usrLink} is a directory, not fscache's link; nothing changed. Run 'fscache setup' once to move it to ${ctx.paths.realTree} and create the link`);
  }
  if (state === 'foreign') throw new FsCacheError('refused', `${ctx.paths.usrLink} points at ${target}, which fscache did not set; nothing changed`);
  if (state === 'missing') throw new FsCacheError('environment', `${ctx.paths.usrLink} is missing; run 'fscache setup --yes'`);
  if (!fs.existsSync(ctx.paths.realTree)) throw new FsCacheError('environment', `the real tree ${ctx.paths.realTree} is missing`);
}

export function configArgs(ctx: Context, explicitConfig: string | undefined): string[] {
  return explicitConfig ? ['--config', ctx.configFile] : [];
}

/**
 * The hook's modules load the randomizer and iced-x86: only start and stop pay for them,
 * not `fscache sync` run from a timer (measured: 0.43 s fixed cost of a sync, half of it loading modules).
 * Loaded late but never through the view: start (also the supervisor, start --foreground) loads
 * them first thing, before the link is switched; stop after the link is back on the real tree.
 */
async function hookModules() {
  return { ...(await import('../loader-hook/control')), ...(await import('../loader-hook/env')) };
}

/**
 * The loader hook: the daemon first (it makes the epoch), then LD_AUDIT for new processes.
 * Fail open: a hook that cannot start leaves launches as they were, and start goes on.
 */
async function startHook(ctx: Context): Promise<void> {
  if (ctx.config.hook !== 'on') return;
  // audit.c reads R/run/fscache (compiled in; the loader gives it no config): elsewhere it would find no epoch.
  if (ctx.paths.runDir !== path.join(ctx.paths.root, 'run', 'fscache')) {
    ctx.log.warn(`loader hook not enabled: it works with the default run_dir (run/fscache) only, not ${path.relative(ctx.paths.root, ctx.paths.runDir)}`);
    return;
  }
  const { startDaemon, disableHook, enableHook } = await hookModules();
  try {
    await startDaemon(ctx.paths, ctx.configFile);
    const { directoriesForAuditor } = await import('../loader-hook/served-images');
    const outside = directoriesForAuditor(ctx.paths, ctx.config);
    if (outside.length) {
      for (const note of enableHook(ctx.paths)) ctx.log.info(note);
    } else {
      // Every library directory is served randomized by the view: an auditor would only cost launches.
      disableHook(ctx.paths);
      ctx.log.info(`loader hook: the ${ctx.config.mode} serves randomized images under the libraries' own names; LD_AUDIT not set (no library directory outside the real tree)`);
    }
  } catch (err) {
    ctx.log.warn(`loader hook not enabled: ${(err as Error).message}`);
    disableHook(ctx.paths);
  }
}

async function stopHook(ctx: Context): Promise<void> {
  const { stopDaemon, disableHook } = await hookModules();
  // New processes first lose LD_AUDIT; processes already running keep the images they mapped.
  for (const note of disableHook(ctx.paths)) ctx.log.info(note);
  await stopDaemon(ctx.paths);
}

/**
 * How start runs: `detach` (a person: the supervisor is started in the background and start
 * returns once R/usr is switched), `foreground` (an init system: this process is the service
 * until SIGTERM), `wait` (an init system's start that already launched the foreground
 * process: wait until it switched R/usr, never start one).
 */
export type StartHow = 'detach' | 'foreground' | 'wait';

/**
 * Mirror mode: the current epoch's images written into the mirror under the libraries' names, or
 * the originals back when images are not served (loader-hook/mirror-images.ts). Fail open: a
 * failure leaves what the mirror holds (each file whole) and says so.
 */
export async function mirrorImages(ctx: Context): Promise<void> {
  if (ctx.config.mode !== 'mirror') return;
  const m = await import('../loader-hook/mirror-images');
  try {
    if (ctx.config.hook === 'on' && ctx.config.serveImages === 'on') m.applyMirrorImages(ctx.paths, ctx.config, ctx.log);
    else m.restoreMirrorOriginals(ctx.paths, ctx.log);
  } catch (err) {
    ctx.log.warn(`mirror: images not brought up to date: ${(err as Error).message}`);
  }
}

/** How long `start --wait` waits for R/usr to be switched; mirror mode compares the whole tree first. */
const WAIT_MS = 120000;

export async function startVerb(ctx: Context, how: StartHow, extraArgs: string[]): Promise<number> {
  if (how === 'wait') return waitStarted(ctx);
  checkLinkIsOurs(ctx);
  packageHooksOnStart(ctx);
  await startHook(ctx);
  if (how === 'foreground') keepLogBounded(ctx.paths.log); // when stderr is the file log (started detached)
  if (ctx.config.mode === 'mirror') {
    if (how === 'foreground') return mirrorForeground(ctx);
    await mirrorImages(ctx);
    out(await startMirror(ctx.paths, ctx.log));
    return 0;
  }
  const running = readSupervisorState(ctx.paths);
  if (how === 'foreground') {
    if (running) throw new FsCacheError('busy', `already supervised by pid ${running.pid}`);
    await new Supervisor(ctx.paths, extraArgs, ctx.log, ctx.config.fuseSession === 'libfuse2').run();
    return 0;
  }
  if (running && (running.state === 'serving' || running.state === 'paused')) {
    out(`already started (supervisor pid ${running.pid}, view pid ${running.viewPid}${running.state === 'paused' ? ', paused' : ''})`);
    return 0;
  }
  if (!running) {
    // What a dead supervisor left (its state, an orphan view, a dead mount) is replaced, not
    // reported as "already mounted"; a view started by hand is refused (busy).
    await replaceStale(ctx);
    fs.mkdirSync(ctx.paths.runDir, { recursive: true });
    const logFd = fs.openSync(ctx.paths.log, 'a');
    const self = selfCommand(ctx.paths); // never exec node or the CLI through the view
    const child = spawn(self.node, [self.cli, '--root', ctx.paths.root, ...extraArgs, 'start', '--foreground'], {
      detached: true,
      stdio: ['ignore', logFd, logFd],
    });
    child.unref();
    fs.closeSync(logFd);
  }
  const deadline = Date.now() + 30000;
  for (;;) {
    const s = readSupervisorState(ctx.paths);
    if (s?.state === 'paused') {
      out(`started, paused: ${ctx.paths.usrLink} stays on the real tree until the pause ends (supervisor pid ${s.pid}, view pid ${s.viewPid})`);
      return 0;
    }
    if (s?.state === 'serving' && readLinkState(ctx.paths).state === 'view') {
      out(`started: ${ctx.paths.usrLink} -> view (supervisor pid ${s.pid}, view pid ${s.viewPid})`);
      return 0;
    }
    if (s?.state === 'retrying' || Date.now() > deadline) {
      throw new FsCacheError('degraded', `the view is not serving (${s?.lastFailure?.reason ?? 'no answer within 30 s'}); ${ctx.paths.usrLink} stays on the real tree, retrying in the background (see ${ctx.paths.log})`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Mirror mode's service process: its state, for `start --wait`. */
function mirrorServiceFile(ctx: Context): string {
  return path.join(ctx.paths.runDir, 'mirror-service.json');
}

interface MirrorServiceState {
  pid: number;
  state: 'starting' | 'serving' | 'retrying';
  reason?: string;
}

function writeMirrorService(ctx: Context, state: MirrorServiceState): void {
  fs.mkdirSync(ctx.paths.runDir, { recursive: true });
  writeAtomic(mirrorServiceFile(ctx), JSON.stringify(state) + '\n', 0o644);
}

/** The supervisor's back-off, for a mirror that cannot be served yet (incomplete, older than the real tree). */
const MIRROR_RETRY_MS = [1000, 2000, 4000, 8000, 16000, 30000, 60000];

/**
 * `start --foreground` in mirror mode: the mirror is bound and R/usr switched to it, readiness
 * is told to systemd, then the process stays until SIGTERM (the init system's stop), which
 * switches R/usr back and unbinds the mirror. A mirror that cannot be served (not synced yet,
 * older than the real tree) leaves R/usr on the real tree and is tried again with back-off,
 * as the supervisor retries a view: `start --wait` reports it, and the init script stops the service.
 */
async function mirrorForeground(ctx: Context): Promise<number> {
  let signalled: string | undefined;
  let wake: () => void = () => undefined;
  for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.once(s, () => ((signalled = s), wake()));
  const sleep = (ms: number) => new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    wake = () => (clearTimeout(timer), resolve());
  });
  writeMirrorService(ctx, { pid: process.pid, state: 'starting' });
  for (let attempt = 0; !signalled; attempt++) {
    try {
      await mirrorImages(ctx);
      out(await startMirror(ctx.paths, ctx.log));
      writeMirrorService(ctx, { pid: process.pid, state: 'serving' });
      sdNotify(ctx.paths, `READY=1\nSTATUS=serving the mirror: ${ctx.paths.usrLink} -> ${fs.readlinkSync(ctx.paths.usrLink)}`, ctx.log);
      // Nothing else keeps this process alive while it serves: a timer does, until the signal.
      const alive = setInterval(() => undefined, 1 << 30);
      await new Promise<void>((resolve) => (signalled ? resolve() : (wake = resolve)));
      clearInterval(alive);
      break;
    } catch (err) {
      const delay = MIRROR_RETRY_MS[Math.min(attempt, MIRROR_RETRY_MS.length - 1)];
      const reason = (err as Error).message;
      ctx.log.error(`${reason}; retrying in ${delay / 1000} s`);
      writeMirrorService(ctx, { pid: process.pid, state: 'retrying', reason });
      sdNotify(ctx.paths, `STATUS=retrying in ${delay / 1000} s, ${ctx.paths.usrLink} on the real tree: ${reason}`, ctx.log);
      await sleep(delay);
    }
  }
  sdNotify(ctx.paths, 'STOPPING=1', ctx.log);
  ctx.log.info(`${signalled}: switching ${ctx.paths.usrLink} to the real tree and unbinding the mirror`);
  try {
    out(stopMirror(ctx.paths));
  } finally {
    fs.rmSync(mirrorServiceFile(ctx), { force: true });
  }
  return 0;
}

/**
 * `start --wait`: what an init script runs after its service manager launched `start
 * --foreground` (OpenRC's supervise-daemon, start-stop-daemon): 0 once R/usr is switched
 * (or held on the real tree by a pause), 4 once the first launch failed (the script then
 * stops the service: nothing is left retrying behind the init system's back), 4 at the deadline.
 */
async function waitStarted(ctx: Context): Promise<number> {
  const deadline = Date.now() + WAIT_MS;
  const fail = (why: string) => new FsCacheError('degraded', `${why}; ${ctx.paths.usrLink} stays on the real tree (see the service's log)`);
  for (;;) {
    if (ctx.config.mode === 'mirror') {
      let s: MirrorServiceState | undefined;
      try {
        s = JSON.parse(fs.readFileSync(mirrorServiceFile(ctx), 'utf8')) as MirrorServiceState;
      } catch {
        s = undefined;
      }
      // Only a living process's state: a dead one's is left from an earlier start.
      if (s && processAlive(s.pid)) {
        if (s.state === 'serving' && readLinkState(ctx.paths, 'mirror').state === 'mirror') {
          out(`started (mirror): ${ctx.paths.usrLink} -> ${fs.readlinkSync(ctx.paths.usrLink)}`);
          return 0;
        }
        if (s.state === 'retrying') throw fail(`the mirror is not served: ${s.reason}`);
      }
    } else {
      const s = readSupervisorState(ctx.paths);
      if (s?.state === 'paused') {
        out(`started, paused: ${ctx.paths.usrLink} stays on the real tree until the pause ends (supervisor pid ${s.pid})`);
        return 0;
      }
      if (s?.state === 'serving' && readLinkState(ctx.paths).state === 'view') {
        out(`started: ${ctx.paths.usrLink} -> view (supervisor pid ${s.pid}, view pid ${s.viewPid})`);
        return 0;
      }
      if (s?.state === 'retrying') throw fail(`the view is not serving (${s.lastFailure?.reason ?? 'its first launch failed'})`);
    }
    if (Date.now() > deadline) throw fail(`not started within ${WAIT_MS / 1000} s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A dead supervisor's leftovers: link to the real tree, its state file gone, the mount point cleared. */
async function replaceStale(ctx: Context, stopByHand = false): Promise<void> {
  checkMayClear(ctx.paths, stopByHand); // before anything changes
  const stale = readSupervisorRecord(ctx.paths);
  if (stale && !stale.alive) {
    ctx.log.warn(`the supervisor pid ${stale.state.pid} is gone; replacing what it left`);
    fs.rmSync(supervisorStateFile(ctx.paths), { force: true });
  }
  if (readLinkState(ctx.paths).state === 'view') switchLink(ctx.paths, 'real');
  await clearMountPoint(ctx.paths, ctx.log, { stopByHand });
}

export async function stopVerb(ctx: Context): Promise<void> {
  packageHooksOnStop(ctx);
  if (mirrorMounted(ctx.paths) || (ctx.config.mode === 'mirror' && !readSupervisorState(ctx.paths))) {
    out(stopMirror(ctx.paths));
    return stopHook(ctx);
  }
  const { state } = readLinkState(ctx.paths);
  // The link first: new launches go to the real tree before anything else changes.
  if (state === 'view' || state === 'mirror') switchLink(ctx.paths, 'real');
  await stopHook(ctx);
  const supervisor = readSupervisorState(ctx.paths);
  if (!supervisor) {
    // No supervisor (dead, or a view run by hand): the view detaches as on SIGTERM; a hung one is aborted.
    const wasMounted = !!fuseMountAt(ctx.paths.viewMount);
    await replaceStale(ctx, true);
    out(wasMounted ? `stopped: ${ctx.paths.usrLink} -> real tree; the view serves its remaining users, then exits`
      : state === 'view' || state === 'mirror' ? `stopped: ${ctx.paths.usrLink} -> real tree` : 'already stopped');
    return;
  }
  // The supervisor switches the link, detaches the view (aborts it if hung) and exits.
  process.kill(supervisor.pid, 'SIGTERM');
  const deadline = Date.now() + 15000;
  while ((readSupervisorState(ctx.paths) || fuseMountAt(ctx.paths.viewMount)) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
  }
  if (fuseMountAt(ctx.paths.viewMount)) throw new FsCacheError('degraded', `${ctx.paths.viewMount} is still mounted after 15 s`);
  out(`stopped: ${ctx.paths.usrLink} -> real tree; the view serves its remaining users, then exits`);
}

export async function syncVerb(ctx: Context, dryRun: boolean): Promise<number> {
  // A progress bar on a terminal only: rsync's progress reports cost 3-5% of an unchanged sync
  // of /usr (bench/RESULTS.md), and a timer's log needs the summary, not the percentages.
  const bar = process.stdout.isTTY ? new (await import('cli-progress')).SingleBar({ format: 'sync [{bar}] {percentage}% {detail}', hideCursor: true }) : undefined;
  bar?.start(100, 0, { detail: '' });
  const result = await syncStore(ctx.paths, ctx.config, ctx.log, {
    dryRun,
    onProgress: bar && ((percent, detail) => bar.update(percent, { detail })),
  }).finally(() => bar?.stop());
  if (!dryRun) await mirrorImages(ctx);
  const verb = dryRun ? 'would transfer' : 'transferred';
  out(`sync (${result.mode}${dryRun ? ', dry run' : ''}): ${verb} ${result.transferred} files` +
    (result.mode === 'mirror' ? `, ${dryRun ? 'would delete' : 'deleted'} ${result.deleted}` : `, index: ${result.updated} updated, ${result.dropped} dropped`));
  if (result.warning) out(`warning: ${result.warning}`);
  return 0;
}
