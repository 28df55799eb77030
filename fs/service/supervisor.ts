/**
 * The supervisor (`fscache start --foreground`, what the init systems run): starts the
 * view process, checks it by reading through it, switches R/usr to it, and watches it.
 *
 * - Death: the view's exit is seen within milliseconds; R/usr goes back to the real tree.
 * - Hang and dead connection: every second a probe through the mount (fs/service/probe.ts) with a
 *   2 s deadline. A missed deadline or ENOTCONN switches R/usr back at once, aborts the
 *   connection through fusectl (launches caught in the hang end with an error), kills the
 *   view and detaches its mount lazily, all without touching the mount point.
 * - Each failure restarts the view with back-off (1 s … 60 s), reset after 60 s of service.
 * - A root-owned R/run/fscache/paused (package managers, `fscache pause`) keeps R/usr on the
 *   real tree; once it is gone and a probe answers, R/usr goes back to the view. A libfuse2
 *   view is renewed first (see renew()).
 * - SIGTERM: the link goes back first, then the view is told to detach; it keeps serving
 *   its last users by itself. A view that does not detach within 5 s is hung and aborted.
 *
 * - The loader hook's daemon, if start started one, is started again when it dies (checked every
 *   DAEMON_CHECK_MS, with back-off).
 * - Rest: after `supervisor_rest_seconds` serving with nothing to do, this process execs the
 *   small static watcher (guard/rest.c, fs/service/rest.ts), which keeps the probes, the exit
 *   watch and stop, and execs this supervisor again for anything else; it then adopts its view.
 *
 * It runs nothing through R/usr: node and the CLI come from the real tree (fs/service/self-command.ts),
 * umount and mount by absolute path in the real tree, and every module is loaded at start.
 * State for `fscache status` (last good probe, last probe error) is in supervisor.json.
 */
import { spawn } from 'child_process';
import { daemonIdle, reviveDaemon } from '../../loader-hook/control';
import * as fs from 'fs';
import * as path from 'path';
import { abortMount, ensureFusectl, fuseMountAt, lazyDetach } from '../fuse/fusectl';
import { linkTargetPath, readLinkState, switchLink } from '../switch/link';
import type { Logger } from '../../core/log';
import { DAEMON_SIGNAL, RENEW_SIGNAL, SUPERVISOR_PID_ENV } from './orphan-watch';
import { isPaused, pauseFile } from '../switch/pause';
import type { Paths } from '../../core/paths';
import { Prober, ProbeFailure } from './probe';
import { adoptChildren, enterRest, pipeFd, reopenLog, RestMemo, Wake } from './rest';
import { guardProgram, sdNotify } from './sd-notify';
import { selfCommand, SelfCommand } from './self-command';
import { clearMountPoint, processAlive } from './stale';
import { keepLogTail, startViewProcess } from './view-process';
import { writeAtomic } from '../../core/write-atomic';
import { receiveSignals } from '../../core/held-signals';

export type SupervisorFailure = 'exit' | 'hang' | 'dead-connection' | 'probe-error' | 'start';

export interface SupervisorState {
  pid: number;
  startedAt: number;
  state: 'starting' | 'serving' | 'paused' | 'retrying' | 'stopping';
  viewPid: number | null;
  restarts: number;
  lastFailure: { at: number; kind: SupervisorFailure; reason: string } | null;
  nextRetryAt: number | null;
  /** When the current view last answered a probe through its mount. */
  lastGoodProbeAt: number | null;
  lastProbeError: { at: number; kind: ProbeFailure; message: string } | null;
  /** Since when the supervisor rests (its watch is guard/rest.c in this pid), or null. */
  restingSince: number | null;
}

/** The view as the supervisor holds it: spawned by this process, or adopted after a rest. */
interface SupervisedView {
  child: {
    readonly pid?: number;
    readonly exitCode: number | null;
    readonly signalCode: NodeJS.Signals | null;
    kill(signal?: NodeJS.Signals | number): boolean;
    once(event: 'exit', listener: (code: number | null, signal: NodeJS.Signals | null) => void): unknown;
  };
  /** stderr of the view so far (its log). */
  log(): string;
  /** The read end of its stderr pipe, -1 if none. */
  logFd: number;
}

export const PROBE_INTERVAL_MS = 1000;
export const PROBE_DEADLINE_MS = 2000;
/** `status` calls the view healthy only if a probe answered this recently. */
export const PROBE_FRESH_MS = 3000;
const BACKOFF_MS = [1000, 2000, 4000, 8000, 16000, 30000, 60000];
/** After this long serving, a crash starts the back-off from its first step again. */
const HEALTHY_RESET_MS = 60000;
const HEALTH_TIMEOUT_MS = 5000;
const DETACH_GRACE_MS = 5000;
const DAEMON_CHECK_MS = 2000;

export function supervisorStateFile(paths: Paths): string {
  return path.join(paths.runDir, 'supervisor.json');
}

/** The supervisor's state file, also a stale one left by a dead supervisor. */
export function readSupervisorRecord(paths: Paths): { state: SupervisorState; alive: boolean } | undefined {
  try {
    const state = JSON.parse(fs.readFileSync(supervisorStateFile(paths), 'utf8')) as SupervisorState;
    return { state, alive: processAlive(state.pid) };
  } catch {
    return undefined;
  }
}

/** The state of a running supervisor, or undefined. */
export function readSupervisorState(paths: Paths): SupervisorState | undefined {
  const r = readSupervisorRecord(paths);
  return r?.alive ? r.state : undefined;
}

/**
 * Reads through the view what it must show: the real tree's top-level names and the
 * first 64 KiB of a file, compared with the real tree. Asynchronous with a timeout, so
 * a hung view fails the check instead of hanging the supervisor.
 */
export async function healthCheck(paths: Paths): Promise<{ hang: boolean; message: string } | undefined> {
  const check = async (): Promise<string | undefined> => {
    // The mount point holds links to the real tree underneath: without a FUSE mount it would pass every read below.
    if (!fuseMountAt(paths.viewMount)) return `no FUSE view is mounted at ${paths.viewMount}`;
    const realNames = (await fs.promises.readdir(paths.realTree)).sort();
    const viewNames = (await fs.promises.readdir(paths.viewMount)).sort();
    if (realNames.join('/') !== viewNames.join('/')) return 'the view lists other names than the real tree';
    for (const dir of ['bin', 'lib', '']) {
      const names = await fs.promises.readdir(path.join(paths.realTree, dir)).catch(() => [] as string[]);
      for (const name of names.sort()) {
        const rel = path.join(dir, name);
        if (!(await fs.promises.lstat(path.join(paths.realTree, rel))).isFile()) continue;
        const read = async (root: string) => {
          const h = await fs.promises.open(path.join(root, rel), 'r');
          try {
            const buf = Buffer.alloc(65536);
            const { bytesRead } = await h.read(buf, 0, buf.length, 0);
            return buf.subarray(0, bytesRead);
          } finally {
            await h.close();
          }
        };
        return (await read(paths.realTree)).equals(await read(paths.viewMount)) ? undefined : `${rel} reads differently through the view`;
      }
    }
    return undefined;
  };
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), HEALTH_TIMEOUT_MS)));
  try {
    const r = await Promise.race([check().catch((err) => `read failed: ${(err as Error).message}`), timeout]);
    if (r === 'timeout') return { hang: true, message: `no answer within ${HEALTH_TIMEOUT_MS} ms` };
    return r === undefined ? undefined : { hang: false, message: r };
  } finally {
    clearTimeout(timer);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface SupervisorOptions {
  /** Replace the view with a fresh one when files change (the libfuse2 session: see renew()). */
  renewOnChange?: boolean;
  /** Rest after this long serving with nothing to do (supervisor_rest_seconds); 0: never. */
  restAfterMs?: number;
  /** This process was woken from its rest (fs/service/rest.ts takeWake). */
  wake?: Wake;
}

export class Supervisor {
  private view?: SupervisedView;
  private prober?: Prober;
  /** Why the current view is being ended (hang, dead connection), reported when it exits. */
  private ending?: { kind: SupervisorFailure; reason: string };
  private servingSince = 0;
  private failuresSinceHealthy = 0;
  private stopping = false;
  private launching?: Promise<void>;
  private retryTimer?: NodeJS.Timeout;
  private tickTimer?: NodeJS.Timeout;
  /** The guard (spawned, or adopted after a rest): ended by a stop. */
  private guard?: { readonly pid?: number; kill(signal?: NodeJS.Signals): boolean };
  /** The children handed back by the rest, reaped by polling. */
  private adopted?: { stop(): void };
  /** When something last happened that the Node supervisor handles (a rest waits for quiet). */
  private lastEventAt = Date.now();
  /** Woken from a rest: R/usr goes back to the view after the next good probe. */
  private relinkAfterProbe = false;
  /** The rest's exec failed once: this process stays awake. */
  private restRefused = false;
  private daemonTimer?: NodeJS.Timeout;
  /** Daemon restarts that failed in a row, for their back-off. */
  private daemonFailures = 0;
  private daemonNextTry = 0;
  /** The view asked for the daemon (it exited idle): served by the next attempt that can run. */
  private daemonDemanded = false;
  /** Whether systemd was told READY=1 (once, when R/usr is first switched). */
  private ready = false;
  private readonly command: SelfCommand;
  private readonly state: SupervisorState = {
    pid: process.pid, startedAt: Date.now(), state: 'starting', viewPid: null, restarts: 0, lastFailure: null, nextRetryAt: null,
    lastGoodProbeAt: null, lastProbeError: null, restingSince: null,
  };
  private done!: () => void;

  private readonly renewOnChange: boolean;
  private readonly restAfterMs: number;
  private readonly wake?: Wake;

  constructor(
    private readonly paths: Paths,
    private readonly configArgs: string[],
    private readonly log: Logger,
    options: SupervisorOptions = {},
  ) {
    this.renewOnChange = options.renewOnChange ?? false;
    this.restAfterMs = options.restAfterMs ?? 0;
    this.wake = options.wake;
    // Resolved now, before R/usr is ever switched: never a path through the view.
    this.command = selfCommand(paths);
    // A probe blocked on a hung view holds one pool thread until the abort frees it; if the
    // abort is impossible (no fusectl) it holds it for good. Effective if the pool has not started.
    process.env.UV_THREADPOOL_SIZE ??= '8';
  }

  /** Runs until SIGTERM/SIGINT/SIGHUP. */
  run(): Promise<void> {
    const finished = new Promise<void>((resolve) => (this.done = resolve));
    const onSignal = (sig: NodeJS.Signals) => {
      if (sig === RENEW_SIGNAL) this.renewAsked();
      else if (sig === DAEMON_SIGNAL) this.daemonAsked();
      else void this.stop(sig);
    };
    if (this.wake && this.adopt(this.wake)) {
      this.tickTimer = setInterval(() => void this.tick(), PROBE_INTERVAL_MS);
      this.daemonTimer = setInterval(() => void this.keepDaemon(), DAEMON_CHECK_MS);
      this.woken(this.wake);
    } else {
      if (this.wake) this.log.warn(`woken from rest, but view pid ${this.wake.viewPid} is not this process's child: starting afresh`);
      this.startFresh();
    }
    // Woken: what the rest took just before its exec, then what node held since (core/held-signals.ts).
    for (const sig of this.wake?.signals ?? []) onSignal(sig);
    if (!receiveSignals(onSignal)) for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP', RENEW_SIGNAL, DAEMON_SIGNAL] as const) process.on(sig, () => onSignal(sig));
    return finished;
  }

  private daemonAsked(): void {
    // Kept until served: an attempt in flight or a back-off now must not lose it (the next check serves it).
    this.daemonDemanded = true;
    this.lastEventAt = Date.now();
    void this.keepDaemon();
  }

  private startFresh(): void {
    // Until a view of ours answers, R/usr is the real tree: a link left on a predecessor's hung
    // view would hang the programs run below (mount, umount load their libraries through R/usr).
    this.setLink('real');
    const problem = ensureFusectl(this.paths);
    if (problem) this.log.warn(`${problem}: a hung view can be killed but launches caught in it may not end`);
    this.writeState();
    this.startGuard();
    this.tickTimer = setInterval(() => void this.tick(), PROBE_INTERVAL_MS);
    this.daemonTimer = setInterval(() => void this.keepDaemon(), DAEMON_CHECK_MS);
    this.startLaunch();
  }

  /**
   * Takes back what the rest kept: the view (if it is this process's child), the guard, the
   * state of supervisor.json and the memo. False when there is no view to adopt.
   */
  private adopt(wake: Wake): boolean {
    const { view, guard, stop } = adoptChildren(wake);
    this.adopted = { stop };
    this.guard = guard;
    if (!view) return false;
    const logStream = reopenLog(wake.logFd);
    logStream?.on('error', () => undefined);
    const log = logStream ? keepLogTail(logStream, (t) => process.stderr.write(t)) : () => '';
    const supervised: SupervisedView = { child: view, log, logFd: logStream ? wake.logFd : -1 };
    this.view = supervised;
    view.once('exit', (code: number | null, signal: NodeJS.Signals | null) => this.onViewExit(supervised, code, signal));
    const record = readSupervisorRecord(this.paths);
    if (record?.state.pid === process.pid) Object.assign(this.state, record.state);
    Object.assign(this.state, { state: 'serving', viewPid: view.pid, restingSince: null });
    this.servingSince = wake.memo.servingSince;
    // Served well long enough while resting (its probes kept lastGoodProbeAt): the back-off starts afresh, as awake.
    const healthy = (this.state.lastGoodProbeAt ?? 0) - this.servingSince >= HEALTHY_RESET_MS;
    this.failuresSinceHealthy = healthy ? 0 : wake.memo.failuresSinceHealthy;
    this.ready = wake.memo.ready;
    this.prober = new Prober(this.paths.viewMount, PROBE_DEADLINE_MS);
    this.writeState();
    return true;
  }

  /** What woke the rest, handled as it would have been awake. R/usr is on the real tree (guard/rest.c). */
  private woken(wake: Wake): void {
    const view = this.view!;
    this.lastEventAt = Date.now();
    this.log.info(`awake: ${wake.event}${wake.detail ? ` (${wake.detail})` : ''}`);
    switch (wake.event) {
      case 'exit':
        return; // the adopted view reports its exit: onViewExit
      case 'hang':
      case 'dead-connection':
      case 'error':
        return this.probeFailed(view, { ok: false, kind: wake.event === 'error' ? 'error' : wake.event, message: wake.detail });
      case 'renew':
        this.relinkAfterProbe = !this.renewOnChange;
        return this.renewAsked();
      case 'daemon':
        this.relinkAfterProbe = true;
        return this.daemonAsked();
      default: // a pause (the next tick follows it), a daemon that died (the next check starts it)
        this.relinkAfterProbe = true;
    }
  }

  /**
   * guard/fscache-guard, a static program that outlives this process: if it dies while its view
   * hangs (the view's own orphan watch cannot run then), the guard puts R/usr back and ends the
   * view. Taken from the real tree; without it supervision goes on (fail open), said in the log.
   */
  private startGuard(): void {
    const guard = guardProgram(this.paths);
    const args = [this.paths.usrLink, linkTargetPath(this.paths, 'real'), linkTargetPath(this.paths, 'view'), this.paths.viewMount, this.paths.viewState];
    try {
      fs.accessSync(guard, fs.constants.X_OK);
      const child = spawn(guard, args, { stdio: ['ignore', 'ignore', 'inherit'] });
      child.on('error', (err) => this.log.warn(`the guard did not start (${err.message}): a hung view would outlive a dead supervisor`));
      this.guard = child;
    } catch (err) {
      this.log.warn(`no guard at ${guard} (${(err as Error).message}): a hung view would outlive a dead supervisor`);
    }
  }

  private writeState(): void {
    // The state is for status only: failing to write it (a full /run) must not stop supervision.
    try {
      const file = supervisorStateFile(this.paths);
      fs.mkdirSync(path.dirname(file), { recursive: true });
      writeAtomic(file, JSON.stringify(this.state, null, 2), 0o644);
    } catch (err) {
      this.log.warn(`state file not written: ${(err as Error).message}`);
    }
  }

  /** Switches R/usr between the real tree and the view; never touches a link that is not fscache's. */
  private setLink(target: 'real' | 'view'): void {
    try {
      const { state } = readLinkState(this.paths);
      if (state === target || (state !== 'real' && state !== 'view')) return;
      if (target === 'view' && isPaused(this.paths)) return;
      switchLink(this.paths, target);
      this.log.info(`${this.paths.usrLink} -> ${target === 'real' ? 'the real tree' : 'the view'}`);
    } catch (err) {
      this.log.error(`switching ${this.paths.usrLink} to ${target} failed: ${(err as Error).message}`);
    }
  }

  /**
   * Follows the pause file: a pause takes R/usr off the view at once and keeps it off; its
   * end switches R/usr back to the view, but only right after a good probe (`mayServe`).
   * Outside a pause the link is left alone: stop switches it to the real tree before it
   * signals this process, and must not find it switched back.
   */
  private applyPause(mayServe: boolean): void {
    if (!this.view || this.ending || (this.state.state !== 'serving' && this.state.state !== 'paused')) return;
    const paused = isPaused(this.paths);
    if (paused) this.setLink('real');
    if (paused === (this.state.state === 'paused') || (!paused && !mayServe)) return;
    if (!paused && this.renewOnChange) return void this.renew(this.view);
    if (!paused) this.setLink('view');
    this.lastEventAt = Date.now();
    this.log.info(paused ? `paused (${pauseFile(this.paths)}): ${this.paths.usrLink} stays on the real tree` : 'pause ended');
    this.state.state = paused ? 'paused' : 'serving';
    this.writeState();
  }

  private fail(kind: SupervisorFailure, reason: string): void {
    this.state.lastFailure = { at: Date.now(), kind, reason };
    this.log.error(reason);
    if (this.stopping) return;
    const delay = BACKOFF_MS[Math.min(this.failuresSinceHealthy, BACKOFF_MS.length - 1)];
    this.failuresSinceHealthy++;
    this.state.restarts++;
    this.state.state = 'retrying';
    this.state.nextRetryAt = Date.now() + delay;
    this.writeState();
    sdNotify(this.paths, `STATUS=retrying in ${delay / 1000} s, ${this.paths.usrLink} on the real tree: ${reason}`, this.log);
    this.retryTimer = setTimeout(() => this.startLaunch(), delay);
  }

  private startLaunch(): void {
    this.launching = this.launch().catch((err) => this.fail('start', `launch failed: ${(err as Error).message}`));
  }

  private async launch(): Promise<void> {
    if (this.stopping) return;
    this.state.state = 'starting';
    this.state.nextRetryAt = null;
    this.state.lastGoodProbeAt = null;
    this.writeState();
    try {
      // A dead mount, a hung view or an orphan left by a dead predecessor.
      await clearMountPoint(this.paths, this.log);
    } catch (err) {
      return this.fail('start', `the mount point is not free: ${(err as Error).message}`);
    }
    let view: SupervisedView;
    try {
      const started = await startViewProcess(this.paths.root, this.paths.viewMount, this.paths.viewState, this.configArgs,
        (t) => process.stderr.write(t), { [SUPERVISOR_PID_ENV]: String(process.pid) }, this.command);
      view = { child: started.child, log: started.log, logFd: pipeFd(started.child.stderr) };
    } catch (err) {
      return this.fail('start', `view did not start: ${(err as Error).message}`);
    }
    this.view = view;
    this.state.viewPid = view.child.pid ?? null;
    view.child.once('exit', (code, signal) => this.onViewExit(view, code, signal));
    if (this.stopping) return;
    const problem = await healthCheck(this.paths);
    if (this.stopping || this.view !== view) return;
    if (problem) return void this.endView(view, problem.hang ? 'hang' : 'start', `the view failed its first check: ${problem.message}`);
    this.prober = new Prober(this.paths.viewMount, PROBE_DEADLINE_MS);
    this.servingSince = Date.now();
    this.lastEventAt = Date.now();
    this.state.lastGoodProbeAt = Date.now();
    this.state.state = isPaused(this.paths) ? 'paused' : 'serving';
    this.setLink(this.state.state === 'paused' ? 'real' : 'view');
    this.writeState();
    // Readiness (Type=notify) only now that R/usr is switched: units ordered after fscache start on the view.
    sdNotify(this.paths, `${this.ready ? '' : 'READY=1\n'}STATUS=${this.state.state}: view pid ${view.child.pid}`, this.log);
    this.ready = true;
    this.log.info(`serving: view pid ${view.child.pid}${isPaused(this.paths) ? ' (paused: the link stays on the real tree)' : ''}`);
  }

  /** The hook's daemon back if it died (a crash or an OOM left launches without images until a restart). */
  private async keepDaemon(): Promise<void> {
    if (this.stopping || Date.now() < this.daemonNextTry) return;
    this.daemonNextTry = Number.MAX_SAFE_INTEGER; // one attempt at a time
    const i = this.configArgs.indexOf('--config');
    const demanded = this.daemonDemanded;
    try {
      const idle = daemonIdle(this.paths);
      const pid = await reviveDaemon(this.paths, i >= 0 ? this.configArgs[i + 1] : undefined, demanded);
      if (demanded) this.daemonDemanded = false;
      if (pid && idle) this.log.info(`the hook daemon started on demand (pid ${pid})`);
      else if (pid) this.log.warn(`the hook daemon was gone: started again (pid ${pid})`);
      this.daemonFailures = 0;
      this.daemonNextTry = 0;
    } catch (err) {
      this.daemonNextTry = Date.now() + BACKOFF_MS[Math.min(this.daemonFailures++, BACKOFF_MS.length - 1)];
      this.log.error(`the hook daemon did not start again: ${(err as Error).message}`);
    }
  }

  /** One probe per second of the serving view; at most one outstanding. */
  private async tick(): Promise<void> {
    const view = this.view;
    const prober = this.prober;
    if (this.stopping || !view || !prober || this.ending) return;
    this.applyPause(false); // a pause takes the link off the view at once
    if (prober.busy) return;
    const r = await prober.probe();
    if (this.stopping || this.view !== view || this.ending) return;
    const now = Date.now();
    if (r.ok) {
      this.state.lastGoodProbeAt = now;
      if (now - this.servingSince >= HEALTHY_RESET_MS) this.failuresSinceHealthy = 0;
      if (this.relinkAfterProbe && this.state.state === 'serving') this.setLink('view');
      this.relinkAfterProbe = false;
      this.applyPause(true);
      this.writeState();
      this.maybeRest(view);
      return;
    }
    this.probeFailed(view, r);
  }

  private probeFailed(view: SupervisedView, r: { ok: false; kind: ProbeFailure; message: string }): void {
    this.state.lastProbeError = { at: Date.now(), kind: r.kind, message: r.message };
    // A view that died answers ENOTCONN too, maybe before its exit event arrives: then the exit is the failure to report.
    if (r.kind !== 'hang' && view.child.pid && !processAlive(view.child.pid)) {
      this.setLink('real');
      return;
    }
    if (r.kind === 'error') this.retire(view, `the view answers wrongly: ${r.message}`);
    else void this.endView(view, r.kind, r.kind === 'hang' ? `the view hangs: ${r.message}` : `the view's connection is dead: ${r.message}`);
  }

  /**
   * The rest (fs/service/rest.ts), once nothing has happened for restAfterMs: serving, not
   * paused, R/usr on the view, no restart, renewal or daemon start in flight or pending.
   * A failed exec (no guard, no addon) leaves this process awake, said once.
   */
  private maybeRest(view: SupervisedView): void {
    const now = Date.now();
    if (!this.restAfterMs || this.restRefused || now - this.lastEventAt < this.restAfterMs) return;
    if (this.state.state !== 'serving' || this.view !== view || this.ending || this.stopping || !view.child.pid || isPaused(this.paths)) return;
    if (this.daemonDemanded || this.daemonNextTry !== 0 || this.prober?.busy || readLinkState(this.paths).state !== 'view') return;
    const memo: RestMemo = { servingSince: this.servingSince, failuresSinceHealthy: this.failuresSinceHealthy, ready: this.ready };
    this.state.restingSince = now;
    this.writeState();
    this.log.info(`resting: the watch goes to ${guardProgram(this.paths)} in this process (pid ${process.pid})`);
    try {
      enterRest(this.paths, guardProgram(this.paths), this.command, { pid: view.child.pid, logFd: view.logFd }, this.guard?.pid ?? 0, memo);
    } catch (err) {
      this.restRefused = true;
      this.state.restingSince = null;
      this.writeState();
      this.log.warn(`no rest (${(err as Error).message}): the Node supervisor stays`);
    }
  }

  /**
   * A view that answers but answers wrongly: R/usr to the real tree, then the view is told
   * to detach (it serves its last users) and a new one is started after the back-off.
   */
  private retire(view: SupervisedView, reason: string): void {
    this.setLink('real');
    this.view = undefined;
    this.prober = undefined;
    this.state.viewPid = null;
    view.child.kill('SIGTERM');
    this.fail('probe-error', `${reason}; ${this.paths.usrLink} -> real tree, the view told to detach`);
  }

  /**
   * The view asked for renewal (a libfuse2 view saw a file it had opened change: see renew()).
   * Outside a pause: R/usr to the real tree at once, then a fresh view; during one nothing
   * more is needed (its end renews). Only root can signal this process.
   */
  private renewAsked(): void {
    const view = this.view;
    if (!this.renewOnChange || !view || this.ending || this.stopping || this.state.state !== 'serving') return;
    this.lastEventAt = Date.now();
    this.setLink('real');
    void this.renew(view);
  }

  /**
   * The end of a pause with the libfuse2 session. libfuse2 names kernel nodes by path, so a
   * file a package replaced would keep its old node, and with it the old file's cached pages
   * (a same-size, same-mtime replacement even across opens: new launches read old bytes).
   * So the view is replaced: the old one detaches and drains (running programs keep the bytes
   * they mapped, read from the objects they opened), and a fresh one starts with no nodes.
   * R/usr stays on the real tree until the new view answers; this is no failure (no back-off).
   */
  private async renew(view: SupervisedView): Promise<void> {
    this.view = undefined;
    this.prober = undefined;
    this.state.viewPid = null;
    this.state.state = 'starting';
    this.writeState();
    this.log.info(`renewing the libfuse2 view (pid ${view.child.pid} detaches and serves its last users)`);
    view.child.kill('SIGTERM');
    const deadline = Date.now() + DETACH_GRACE_MS;
    while (fuseMountAt(this.paths.viewMount) && Date.now() < deadline) await sleep(50);
    // Not detached in time: hung; launch()'s clearing of the mount point ends it.
    if (!this.stopping) this.startLaunch();
  }

  /**
   * A hung view or a dead connection: R/usr to the real tree first, then the connection is
   * aborted (launches caught in the hang end with an error), the view killed and its mount
   * detached lazily. The view's exit reports the failure and schedules the restart.
   */
  private async endView(view: SupervisedView, kind: SupervisorFailure, reason: string): Promise<void> {
    if (this.ending) return;
    this.ending = { kind, reason };
    this.setLink('real');
    this.log.error(`${reason}: ${this.paths.usrLink} -> real tree; ending the view`);
    this.writeState();
    const aborted = abortMount(this.paths, this.paths.viewMount);
    view.child.kill('SIGKILL');
    const detached = fuseMountAt(this.paths.viewMount) ? await lazyDetach(this.paths, this.paths.viewMount) : true;
    this.log.info(`${aborted}; view pid ${view.child.pid} killed; ${detached ? 'mount detached' : 'lazy unmount failed'}`);
    // A process that cannot die (still in the kernel) must not stop supervision.
    await sleep(DETACH_GRACE_MS);
    if (this.view === view) this.onViewExit(view, null, null);
  }

  private onViewExit(view: SupervisedView, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.view !== view) return;
    this.view = undefined;
    this.prober = undefined;
    this.state.viewPid = null;
    // First the link: launches must not resolve through a dead view.
    this.setLink('real');
    const ending = this.ending;
    this.ending = undefined;
    if (this.stopping) return;
    const tail = view.log().trim().split('\n').slice(-2).join(' | ');
    const what = ending?.reason ?? `view exited (${signal ?? (code === null ? 'did not exit' : `code ${code}`)})`;
    this.fail(ending?.kind ?? 'exit', `${what}; ${this.paths.usrLink} -> real tree${tail ? `; last log: ${tail}` : ''}`);
  }

  async stop(sig: string): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    sdNotify(this.paths, 'STOPPING=1', this.log);
    this.log.info(`${sig}: switching ${this.paths.usrLink} to the real tree and detaching the view`);
    clearTimeout(this.retryTimer);
    clearInterval(this.tickTimer);
    clearInterval(this.daemonTimer);
    this.state.state = 'stopping';
    this.setLink('real');
    this.writeState();
    await this.launching;
    const view = this.view;
    if (view && view.child.exitCode === null && view.child.signalCode === null) {
      view.child.kill('SIGTERM');
      // Wait until the mount is detached; the view process itself may live on while users remain.
      const deadline = Date.now() + DETACH_GRACE_MS;
      while (fuseMountAt(this.paths.viewMount) && Date.now() < deadline) await sleep(50);
      if (fuseMountAt(this.paths.viewMount)) {
        // It did not detach: hung. A hung view serves nobody; end it so nothing waits on it.
        const aborted = abortMount(this.paths, this.paths.viewMount);
        view.child.kill('SIGKILL');
        await lazyDetach(this.paths, this.paths.viewMount);
        this.log.warn(`the view did not detach within ${DETACH_GRACE_MS} ms: ${aborted}, killed`);
      }
    }
    fs.rmSync(supervisorStateFile(this.paths), { force: true });
    this.guard?.kill('SIGTERM'); // a stop, not a death: nothing for it to do
    this.adopted?.stop();
    this.done();
  }
}
