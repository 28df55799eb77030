/** The administrator's verbs: setup, start, stop, sync. */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { FsCacheError } from '../fs/errors';
import { readLinkState, switchLink } from '../fs/link';
import { mirrorMounted, startMirror, stopMirror } from '../fs/mirror';
import { isMountPoint } from '../fs/preflight';
import { planSetup, refreshViewDirIfIdle, runSetup } from '../fs/setup';
import { readSupervisorState, Supervisor } from '../fs/supervisor';
import { syncStore } from '../fs/sync';
import { CLI_ENTRY } from '../fs/view-process';
import type { ViewState } from '../fs/view-service';
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
    enableHook(ctx.paths);
  } catch (err) {
    ctx.log.warn(`loader hook not enabled: ${(err as Error).message}`);
    disableHook(ctx.paths);
  }
}

async function stopHook(ctx: Context): Promise<void> {
  const { stopDaemon, disableHook } = await hookModules();
  // New processes first lose LD_AUDIT; processes already running keep the images they mapped.
  disableHook(ctx.paths);
  await stopDaemon(ctx.paths);
}

export async function startVerb(ctx: Context, foreground: boolean, extraArgs: string[]): Promise<number> {
  checkLinkIsOurs(ctx);
  packageHooksOnStart(ctx);
  await startHook(ctx);
  if (ctx.config.mode === 'mirror') {
    out(await startMirror(ctx.paths, ctx.log));
    return 0;
  }
  const running = readSupervisorState(ctx.paths);
  if (foreground) {
    if (running) throw new FsCacheError('busy', `already supervised by pid ${running.pid}`);
    await new Supervisor(ctx.paths, extraArgs, ctx.log).run();
    return 0;
  }
  if (running?.state === 'serving' && readLinkState(ctx.paths).state === 'view') {
    out(`already started (supervisor pid ${running.pid}, view pid ${running.viewPid})`);
    return 0;
  }
  if (!running) {
    fs.mkdirSync(ctx.paths.runDir, { recursive: true });
    const logFd = fs.openSync(ctx.paths.log, 'a');
    const child = spawn(process.execPath, [CLI_ENTRY, '--root', ctx.paths.root, ...extraArgs, 'start', '--foreground'], {
      detached: true,
      stdio: ['ignore', logFd, logFd],
    });
    child.unref();
    fs.closeSync(logFd);
  }
  const deadline = Date.now() + 30000;
  for (;;) {
    const s = readSupervisorState(ctx.paths);
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
  let viewPid: number | undefined;
  try {
    viewPid = (JSON.parse(fs.readFileSync(ctx.paths.viewState, 'utf8')) as ViewState).pid;
  } catch {
    viewPid = undefined;
  }
  if (!supervisor && !isMountPoint(ctx.paths.viewMount)) {
    out(state === 'view' || state === 'mirror' ? `stopped: ${ctx.paths.usrLink} -> real tree` : 'already stopped');
    return;
  }
  if (supervisor) process.kill(supervisor.pid, 'SIGTERM');
  else if (viewPid) process.kill(viewPid, 'SIGTERM');
  const deadline = Date.now() + 15000;
  while ((readSupervisorState(ctx.paths) || isMountPoint(ctx.paths.viewMount)) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
  }
  if (isMountPoint(ctx.paths.viewMount)) throw new FsCacheError('degraded', `${ctx.paths.viewMount} is still mounted after 15 s`);
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
  const verb = dryRun ? 'would transfer' : 'transferred';
  out(`sync (${result.mode}${dryRun ? ', dry run' : ''}): ${verb} ${result.transferred} files` +
    (result.mode === 'mirror' ? `, ${dryRun ? 'would delete' : 'deleted'} ${result.deleted}` : `, index: ${result.updated} updated, ${result.dropped} dropped`));
  if (result.warning) out(`warning: ${result.warning}`);
  return 0;
}
