/**
 * The supervisor's rest (issue 16: fscache's own footprint at idle). A Node supervisor is
 * ~50 MiB resident for a job that, while the view serves quietly, is a probe a second. After
 * `supervisor_rest_seconds` with nothing to do it execs guard/fscache-guard --rest in its own
 * process (guard/rest.c says what that keeps doing): the pid stays, and with it what the init
 * system, the view (its parent, whom it signals) and the guard know the supervisor by. Anything
 * the rest does not handle itself execs the same Node command line again, with what happened
 * in FSCACHE_SUPERVISOR_WAKE; that supervisor adopts the view (a child libuv did not spawn:
 * its exit is polled with waitpid) and goes on as if it had never left.
 */
import { EventEmitter } from 'events';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import type { Readable } from 'stream';
import { WAKE_ENV } from '../../core/held-signals';
import { native } from '../../core/native';
import type { Paths } from '../../core/paths';
import { hookPaths } from '../../loader-hook/hook-paths';
import { linkTargetPath } from '../switch/link';
import { pauseFile } from '../switch/pause';
import type { SelfCommand } from './self-command';


export type WakeEvent = 'exit' | 'hang' | 'dead-connection' | 'error' | 'renew' | 'daemon' | 'daemon-gone' | 'pause';

/** What the Node supervisor keeps across its rest, beside supervisor.json. */
export interface RestMemo {
  servingSince: number;
  failuresSinceHealthy: number;
  /** systemd was told READY=1. */
  ready: boolean;
}

export interface Wake {
  event: WakeEvent;
  detail: string;
  /** The view's exit, when the rest reaped it. */
  exit: { code: number | null; signal: NodeJS.Signals | null } | null;
  viewPid: number;
  guardPid: number;
  /** The read end of the view's stderr, kept open across both execs; -1 if closed. */
  logFd: number;
  /** This process's children when the rest woke it (view, guard, daemon, a blocked probe). */
  children: number[];
  /** Signals the rest took just before its exec, to be handled as if they came now. */
  signals: NodeJS.Signals[];
  memo: RestMemo;
}

/** The name of signal number `n` ('SIGKILL'), or null. */
function signalName(n: number): NodeJS.Signals | null {
  return (Object.entries(os.constants.signals).find(([, v]) => v === n)?.[0] ?? null) as NodeJS.Signals | null;
}

const EVENTS: readonly WakeEvent[] = ['exit', 'hang', 'dead-connection', 'error', 'renew', 'daemon', 'daemon-gone', 'pause'];

/**
 * The wake the rest left in this process's environment, taken out of it (the view and the
 * daemon started later must not inherit it); undefined when there is none or it is malformed.
 * Only root can set the environment of a root process, and the pids it names are adopted only
 * if they are this process's children (see Adopted).
 */
export function takeWake(): Wake | undefined {
  const raw = process.env[WAKE_ENV];
  delete process.env[WAKE_ENV];
  if (!raw) return undefined;
  const f = new Map(raw.split('\n').map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]));
  const event = f.get('event') as WakeEvent;
  const int = (k: string) => Number.parseInt(f.get(k) ?? '', 10);
  if (!EVENTS.includes(event) || !(int('view') > 1)) return undefined;
  let memo: RestMemo;
  try {
    memo = JSON.parse(f.get('memo') ?? '') as RestMemo;
  } catch {
    return undefined;
  }
  const status = int('status');
  // A wait status: the low 7 bits are the signal that ended it, else the exit code is in the next byte.
  const exit = status >= 0 ? ((status & 0x7f) === 0 ? { code: (status >> 8) & 0xff, signal: null } : { code: null, signal: signalName(status & 0x7f) }) : null;
  return {
    event, detail: f.get('detail') ?? '', exit, viewPid: int('view'), guardPid: int('guard'), logFd: int('logfd'),
    children: (f.get('children') ?? '').split(',').map(Number).filter((n) => n > 1),
    signals: (f.get('signals') ?? '').split(',').filter((n): n is NodeJS.Signals => n in os.constants.signals), memo,
  };
}

/** The descriptor under a pipe stream of a child's stdio (libuv's), or -1. */
export function pipeFd(stream: Readable | null | undefined): number {
  const fd = (stream as unknown as { _handle?: { fd?: number } } | null)?._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
}

/**
 * Execs the rest in this process; returns only by throwing (the supervisor then stays awake).
 * `command` is node and the CLI in the real tree; the rest runs them again with this process's
 * node flags and arguments.
 */
export function enterRest(paths: Paths, guard: string, command: SelfCommand, view: { pid: number; logFd: number }, guardPid: number, memo: RestMemo): never {
  // libuv marks even stdin, stdout and stderr close-on-exec: the rest would run with none (and its
  // first open would become its stderr). They, and the view's log, are kept across the exec.
  const kept = [0, 1, 2, ...(view.logFd >= 0 ? [view.logFd] : [])];
  for (const fd of kept) native.setCloexec(fd, 0);
  const argv = [guard, '--rest', paths.usrLink, linkTargetPath(paths, 'real'), linkTargetPath(paths, 'view'), paths.viewMount,
    `${paths.runDir}/supervisor.json`, pauseFile(paths), hookPaths(paths).pidFile, paths.log, String(view.pid), String(guardPid), String(view.logFd),
    JSON.stringify(memo), '--', command.node, ...process.execArgv, command.cli, ...process.argv.slice(2)];
  const env = Object.entries(process.env).filter(([, v]) => v !== undefined).map(([k, v]) => `${k}=${v}`);
  try {
    return native.execve(guard, argv, env);
  } finally {
    for (const fd of kept) native.setCloexec(fd, 1);
  }
}

/** A child of this process that libuv did not spawn, as much of a ChildProcess as the supervisor uses. */
export class AdoptedChild extends EventEmitter {
  exitCode: number | null = null;
  signalCode: NodeJS.Signals | null = null;

  constructor(readonly pid: number) {
    super();
  }

  kill(signal: NodeJS.Signals | number = 'SIGTERM'): boolean {
    if (this.exitCode !== null || this.signalCode !== null) return false; // reaped: the pid may be another process's now
    try {
      process.kill(this.pid, signal);
      return true;
    } catch {
      return false;
    }
  }

  /** Reaped: kill() no longer signals the pid; 'exit' is emitted on the next turn, once listeners are in place. */
  exited(code: number | null, signal: NodeJS.Signals | null): void {
    this.exitCode = code;
    this.signalCode = signal;
    setImmediate(() => this.emit('exit', code, signal));
  }
}

const REAP_MS = 100;

/**
 * The children the rest handed back: each reaped when it exits (libuv reaps only its own), the
 * view's exit reported within REAP_MS. A pid that is not this process's child is dropped.
 */
export function adoptChildren(wake: Wake): { view: AdoptedChild | undefined; guard: AdoptedChild | undefined; stop(): void } {
  const view = new AdoptedChild(wake.viewPid);
  const guard = wake.children.includes(wake.guardPid) ? new AdoptedChild(wake.guardPid) : undefined;
  const watched = new Map<number, AdoptedChild | undefined>(wake.children.map((pid) => [pid, pid === wake.viewPid ? view : pid === guard?.pid ? guard : undefined]));
  const timer = setInterval(() => {
    for (const [pid, child] of watched) {
      let status: ReturnType<typeof native.waitpid>;
      try {
        status = native.waitpid(pid);
      } catch {
        watched.delete(pid); // not ours (ECHILD)
        continue;
      }
      if (!status) continue;
      watched.delete(pid);
      child?.exited(status.code, status.signal === null ? null : signalName(status.signal));
    }
    if (!watched.size) clearInterval(timer);
  }, REAP_MS);
  timer.unref();
  if (wake.exit) view.exited(wake.exit.code, wake.exit.signal);
  const ours = !!wake.exit || watched.has(wake.viewPid);
  return { view: ours ? view : undefined, guard, stop: () => clearInterval(timer) };
}

/** The view's log pipe (libuv's: a socket pair) again, as a stream (fd from the wake); undefined if it was closed. */
export function reopenLog(fd: number): net.Socket | undefined {
  if (fd < 0) return undefined;
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFIFO() && !st.isSocket()) return undefined;
    native.setCloexec(fd, 1); // not for the daemon or a view started from here
    return new net.Socket({ fd, readable: true, writable: false });
  } catch {
    return undefined;
  }
}
