/**
 * A view started by a supervisor does not outlive it by more than ~0.5 s: without its
 * supervisor nothing would switch R/usr back if the view hung or died. The supervisor
 * passes its pid in the view's environment; a view run by hand (`fscache mount`) has
 * none and is not watched.
 */
import * as fs from 'fs';
import * as os from 'os';
import { readLinkState, switchLink } from '../switch/link';
import type { Logger } from '../../core/log';
import type { Paths } from '../../core/paths';

export const SUPERVISOR_PID_ENV = 'FSCACHE_SUPERVISOR_PID';

/** The supervisor that started this process, if any. */
export function supervisorPidFromEnv(): number | undefined {
  const pid = Number(process.env[SUPERVISOR_PID_ENV]);
  return Number.isInteger(pid) && pid > 1 ? pid : undefined;
}

/** The signal by which a view asks its supervisor to replace it with a fresh one (Supervisor.renew). */
export const RENEW_SIGNAL = 'SIGUSR2';

/**
 * The signal by which a view asks its supervisor to start the randomization daemon (exited idle).
 * Not SIGUSR1: Node starts its inspector on it (a debugger port in a root process). SIGURG is
 * ignored by default, so a stray one harms no other process.
 */
export const DAEMON_SIGNAL = 'SIGURG';

/** Asks the supervisor for a fresh view; false when there is none to ask (a view run by hand). */
export function requestRenewal(): boolean {
  return signalSupervisor(RENEW_SIGNAL);
}

/** Asks the supervisor to start the daemon; false when there is none to ask. */
export function requestDaemon(): boolean {
  return signalSupervisor(DAEMON_SIGNAL);
}

function signalSupervisor(signal: NodeJS.Signals): boolean {
  const sup = supervisorPidFromEnv();
  // Only our own parent: a reused pid of a dead supervisor is never signalled.
  if (!sup || process.ppid !== sup) return false;
  sendWhenCaught(sup, signal, Date.now() + CATCH_WAIT_MS);
  return true;
}

const CATCH_WAIT_MS = 5000;

/**
 * Sent once the supervisor catches `signal`: waking from its rest (fs/service/rest.ts) it is a
 * fresh node for ~150 ms, and SIGUSR2's default action would end it. Dropped if it does not
 * catch it within CATCH_WAIT_MS, or is no longer our parent.
 */
function sendWhenCaught(pid: number, signal: NodeJS.Signals, deadline: number): void {
  if (process.ppid !== pid) return;
  if (catches(pid, signal)) return void process.kill(pid, signal);
  if (Date.now() < deadline) setTimeout(() => sendWhenCaught(pid, signal, deadline), 100).unref();
}

/** Whether process `pid` has a handler for `signal` (SigCgt in /proc/PID/status). */
export function catches(pid: number, signal: NodeJS.Signals): boolean {
  try {
    const mask = /SigCgt:\s+([0-9a-f]+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return !!mask && ((BigInt(`0x${mask[1]}`) >> BigInt(os.constants.signals[signal] - 1)) & 1n) === 1n;
  } catch {
    return false;
  }
}

/**
 * Every 250 ms: is this process still the supervisor's child? (A dead parent's children
 * are reparented, so the test cannot be fooled by a reused pid.) When it is not, switch
 * R/usr to the real tree if it is on the view, then stop exactly as on SIGTERM (the mount
 * verb's handler: detach lazily, serve the last users, exit). Returns the cancel function.
 */
export function watchSupervisor(paths: Paths, log: Logger): () => void {
  const sup = supervisorPidFromEnv();
  if (!sup) return () => undefined;
  const timer = setInterval(() => {
    if (process.ppid === sup) return;
    clearInterval(timer);
    log.warn(`the supervisor (pid ${sup}) is gone: switching ${paths.usrLink} to the real tree and detaching`);
    try {
      if (readLinkState(paths).state === 'view') switchLink(paths, 'real');
    } catch (err) {
      log.error(`switching ${paths.usrLink} to the real tree failed: ${(err as Error).message}`);
    }
    process.kill(process.pid, 'SIGTERM');
  }, 250);
  return () => clearInterval(timer);
}
