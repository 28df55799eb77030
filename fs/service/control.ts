/**
 * The service seen from outside it: what `fscache start` (detached), `start --wait` (after an init
 * system launched `start --foreground`) and `stop` do to start, wait for and end the supervised view,
 * and mirror mode's service process (`start --foreground` in mirror mode). The CLI only prints.
 */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { FsCacheError } from '../../core/errors';
import type { Logger } from '../../core/log';
import type { Paths } from '../../core/paths';
import { writeAtomic } from '../../core/write-atomic';
import { fuseMountAt } from '../fuse/fusectl';
import { startMirror, stopMirror } from '../store/mirror';
import { readLinkState, switchLink } from '../switch/link';
import { sdNotify } from './sd-notify';
import { selfCommand } from './self-command';
import { checkMayClear, clearMountPoint, processAlive } from './stale';
import { readSupervisorRecord, readSupervisorState, supervisorStateFile } from './supervisor';

/** A dead supervisor's leftovers: link to the real tree, its state file gone, the mount point cleared. */
export async function replaceStale(paths: Paths, log: Logger, stopByHand = false): Promise<void> {
  checkMayClear(paths, stopByHand); // before anything changes
  const stale = readSupervisorRecord(paths);
  if (stale && !stale.alive) {
    log.warn(`the supervisor pid ${stale.state.pid} is gone; replacing what it left`);
    fs.rmSync(supervisorStateFile(paths), { force: true });
  }
  if (readLinkState(paths).state === 'view') switchLink(paths, 'real');
  await clearMountPoint(paths, log, { stopByHand });
}

/**
 * `fscache start` by a person: the supervisor (`start --foreground`) in the background, its output
 * in the log; resolves with what to print once R/usr is switched (or held by a pause), throws once
 * its first launch failed or after 30 s.
 */
export async function startSupervised(paths: Paths, log: Logger, extraArgs: string[]): Promise<string> {
  const running = readSupervisorState(paths);
  if (running && (running.state === 'serving' || running.state === 'paused')) {
    return `already started (supervisor pid ${running.pid}, view pid ${running.viewPid}${running.state === 'paused' ? ', paused' : ''})`;
  }
  if (!running) {
    // What a dead supervisor left (its state, an orphan view, a dead mount) is replaced, not
    // reported as "already mounted"; a view started by hand is refused (busy).
    await replaceStale(paths, log);
    fs.mkdirSync(paths.runDir, { recursive: true });
    const logFd = fs.openSync(paths.log, 'a');
    const self = selfCommand(paths); // never exec node or the CLI through the view
    const child = spawn(self.node, [self.cli, '--root', paths.root, ...extraArgs, 'start', '--foreground'], { detached: true, stdio: ['ignore', logFd, logFd] });
    child.unref();
    fs.closeSync(logFd);
  }
  const deadline = Date.now() + 30000;
  for (;;) {
    const s = readSupervisorState(paths);
    if (s?.state === 'paused') return `started, paused: ${paths.usrLink} stays on the real tree until the pause ends (supervisor pid ${s.pid}, view pid ${s.viewPid})`;
    if (s?.state === 'serving' && readLinkState(paths).state === 'view') return `started: ${paths.usrLink} -> view (supervisor pid ${s.pid}, view pid ${s.viewPid})`;
    if (s?.state === 'retrying' || Date.now() > deadline) {
      throw new FsCacheError('degraded', `the view is not serving (${s?.lastFailure?.reason ?? 'no answer within 30 s'}); ${paths.usrLink} stays on the real tree, retrying in the background (see ${paths.log})`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * `start --wait`: what an init script runs after its service manager launched `start
 * --foreground` (OpenRC's supervise-daemon, start-stop-daemon): resolves once R/usr is switched
 * (or held on the real tree by a pause); throws once the first launch failed (the script then
 * stops the service: nothing is left retrying behind the init system's back), or at the deadline.
 */
export async function awaitStarted(paths: Paths, mirror: boolean, waitMs: number): Promise<string> {
  const deadline = Date.now() + waitMs;
  const fail = (why: string) => new FsCacheError('degraded', `${why}; ${paths.usrLink} stays on the real tree (see the service's log)`);
  for (;;) {
    if (mirror) {
      const s = readMirrorService(paths);
      // Only a living process's state: a dead one's is left from an earlier start.
      if (s && processAlive(s.pid)) {
        if (s.state === 'serving' && readLinkState(paths, 'mirror').state === 'mirror') return `started (mirror): ${paths.usrLink} -> ${fs.readlinkSync(paths.usrLink)}`;
        if (s.state === 'retrying') throw fail(`the mirror is not served: ${s.reason}`);
      }
    } else {
      const s = readSupervisorState(paths);
      if (s?.state === 'paused') return `started, paused: ${paths.usrLink} stays on the real tree until the pause ends (supervisor pid ${s.pid})`;
      if (s?.state === 'serving' && readLinkState(paths).state === 'view') return `started: ${paths.usrLink} -> view (supervisor pid ${s.pid}, view pid ${s.viewPid})`;
      if (s?.state === 'retrying') throw fail(`the view is not serving (${s.lastFailure?.reason ?? 'its first launch failed'})`);
    }
    if (Date.now() > deadline) throw fail(`not started within ${waitMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * `stop` of the view (the link is already on the real tree): the supervisor is told (it detaches
 * the view, aborts a hung one, and exits); without one, what is left is replaced as on SIGTERM.
 * Resolves with what to print.
 */
export async function stopSupervised(paths: Paths, log: Logger, linkWasServing: boolean): Promise<string> {
  const supervisor = readSupervisorState(paths);
  if (!supervisor) {
    // No supervisor (dead, or a view run by hand): the view detaches as on SIGTERM; a hung one is aborted.
    const wasMounted = !!fuseMountAt(paths.viewMount);
    await replaceStale(paths, log, true);
    return wasMounted ? `stopped: ${paths.usrLink} -> real tree; the view serves its remaining users, then exits`
      : linkWasServing ? `stopped: ${paths.usrLink} -> real tree` : 'already stopped';
  }
  process.kill(supervisor.pid, 'SIGTERM');
  const deadline = Date.now() + 15000;
  while ((readSupervisorState(paths) || fuseMountAt(paths.viewMount)) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
  }
  if (fuseMountAt(paths.viewMount)) throw new FsCacheError('degraded', `${paths.viewMount} is still mounted after 15 s`);
  return `stopped: ${paths.usrLink} -> real tree; the view serves its remaining users, then exits`;
}

// ---------------------------------------------------------------- mirror mode's service

interface MirrorServiceState {
  pid: number;
  state: 'starting' | 'serving' | 'retrying';
  reason?: string;
}

function mirrorServiceFile(paths: Paths): string {
  return path.join(paths.runDir, 'mirror-service.json');
}

function readMirrorService(paths: Paths): MirrorServiceState | undefined {
  try {
    return JSON.parse(fs.readFileSync(mirrorServiceFile(paths), 'utf8')) as MirrorServiceState;
  } catch {
    return undefined;
  }
}

function writeMirrorService(paths: Paths, state: MirrorServiceState): void {
  fs.mkdirSync(paths.runDir, { recursive: true });
  writeAtomic(mirrorServiceFile(paths), JSON.stringify(state) + '\n', 0o644);
}

/** The supervisor's back-off, for a mirror that cannot be served yet (incomplete, older than the real tree). */
const MIRROR_RETRY_MS = [1000, 2000, 4000, 8000, 16000, 30000, 60000];

/**
 * `start --foreground` in mirror mode: the mirror is bound and R/usr switched to it (after
 * `prepare`, which brings its images up to date), readiness is told to systemd, then the process
 * stays until SIGTERM (the init system's stop), which switches R/usr back and unbinds the mirror.
 * A mirror that cannot be served (not synced yet, older than the real tree) leaves R/usr on the
 * real tree and is tried again with back-off, as the supervisor retries a view: `start --wait`
 * reports it, and the init script stops the service. `say` prints each step.
 */
export async function runMirrorService(paths: Paths, log: Logger, prepare: () => Promise<void>, say: (s: string) => void): Promise<void> {
  let signalled: string | undefined;
  let wake: () => void = () => undefined;
  for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.once(s, () => ((signalled = s), wake()));
  const sleep = (ms: number) => new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    wake = () => (clearTimeout(timer), resolve());
  });
  writeMirrorService(paths, { pid: process.pid, state: 'starting' });
  for (let attempt = 0; !signalled; attempt++) {
    try {
      await prepare();
      say(await startMirror(paths, log));
      writeMirrorService(paths, { pid: process.pid, state: 'serving' });
      sdNotify(paths, `READY=1\nSTATUS=serving the mirror: ${paths.usrLink} -> ${fs.readlinkSync(paths.usrLink)}`, log);
      // Nothing else keeps this process alive while it serves: a timer does, until the signal.
      const alive = setInterval(() => undefined, 1 << 30);
      await new Promise<void>((resolve) => (signalled ? resolve() : (wake = resolve)));
      clearInterval(alive);
      break;
    } catch (err) {
      const delay = MIRROR_RETRY_MS[Math.min(attempt, MIRROR_RETRY_MS.length - 1)];
      const reason = (err as Error).message;
      log.error(`${reason}; retrying in ${delay / 1000} s`);
      writeMirrorService(paths, { pid: process.pid, state: 'retrying', reason });
      sdNotify(paths, `STATUS=retrying in ${delay / 1000} s, ${paths.usrLink} on the real tree: ${reason}`, log);
      await sleep(delay);
    }
  }
  sdNotify(paths, 'STOPPING=1', log);
  log.info(`${signalled}: switching ${paths.usrLink} to the real tree and unbinding the mirror`);
  try {
    say(stopMirror(paths));
  } finally {
    fs.rmSync(mirrorServiceFile(paths), { force: true });
  }
}
