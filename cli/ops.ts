/** The administrator's verbs: setup, start, stop, sync. */
import * as fs from 'fs';
import * as path from 'path';
import { FsCacheError } from '../core/errors';
import { readLinkState, switchLink } from '../fs/switch/link';
import { mirrorMounted, startMirror, stopMirror } from '../fs/store/mirror';
import { planSetup, refreshViewDirIfIdle, runSetup } from '../fs/switch/setup';
import { keepLogBounded } from '../core/log';
import { awaitStarted, runMirrorService, startSupervised, stopSupervised } from '../fs/service/control';
import { readSupervisorState, Supervisor, SupervisorOptions } from '../fs/service/supervisor';
import { takeWake, Wake } from '../fs/service/rest';
import { syncStore } from '../fs/store/sync';
import type { Context } from './context';
import { packageHooksOnStart, packageHooksOnStop } from './pkg';

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
  // Woken from its rest (fs/service/rest.ts): the same supervisor, its view and daemon already running.
  const wake = how === 'foreground' ? takeWake() : undefined;
  if (wake) {
    keepLogBounded(ctx.paths.log);
    await new Supervisor(ctx.paths, extraArgs, ctx.log, supervisorOptions(ctx, wake)).run();
    return 0;
  }
  checkLinkIsOurs(ctx);
  packageHooksOnStart(ctx);
  await startHook(ctx);
  if (how === 'foreground') keepLogBounded(ctx.paths.log); // when stderr is the file log (started detached)
  if (ctx.config.mode === 'mirror') {
    if (how === 'foreground') {
      await runMirrorService(ctx.paths, ctx.log, () => mirrorImages(ctx), out);
      return 0;
    }
    await mirrorImages(ctx);
    out(await startMirror(ctx.paths, ctx.log));
    return 0;
  }
  if (how === 'foreground') {
    const running = readSupervisorState(ctx.paths);
    if (running) throw new FsCacheError('busy', `already supervised by pid ${running.pid}`);
    await new Supervisor(ctx.paths, extraArgs, ctx.log, supervisorOptions(ctx)).run();
    return 0;
  }
  out(await startSupervised(ctx.paths, ctx.log, extraArgs));
  return 0;
}

function supervisorOptions(ctx: Context, wake?: Wake): SupervisorOptions {
  return { renewOnChange: ctx.config.fuseSession === 'libfuse2', restAfterMs: ctx.config.supervisorRestSeconds * 1000, wake };
}

/** `start --wait`: 0 once R/usr is switched (see awaitStarted). */
async function waitStarted(ctx: Context): Promise<number> {
  out(await awaitStarted(ctx.paths, ctx.config.mode === 'mirror', WAIT_MS));
  return 0;
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
  out(await stopSupervised(ctx.paths, ctx.log, state === 'view' || state === 'mirror'));
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
