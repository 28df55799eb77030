/**
 * Starting and stopping the view as its own process (`fscache mount`). The view must
 * never be touched by its own process, so whoever launches programs through it
 * (demo, tests, start) runs it as a child.
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import type { Readable } from 'stream';
import { CLI_ENTRY } from '../../core/package-root';
import { isMountPoint } from './preflight';
import type { SelfCommand } from './self-command';
import type { ViewState } from '../view/view-service';

export { CLI_ENTRY };

export interface ViewProcess {
  child: ChildProcess;
  mountpoint: string;
  stateFile: string;
  /** stderr of the view so far (its log). */
  log(): string;
  state(): ViewState | undefined;
  /** SIGTERM, then wait for it to exit (it waits for the last user of the mount). */
  stop(timeoutMs?: number): Promise<number | null>;
}

/**
 * A view's log as it comes from `stream`, passed on to `onLog`; returns what it said so far,
 * kept to its last 64 KiB (a long-running view logs forever).
 */
export function keepLogTail(stream: Readable, onLog?: (text: string) => void): () => string {
  let tail = '';
  stream.on('data', (d) => {
    tail = (tail + d).slice(-65536);
    onLog?.(String(d));
  });
  return () => tail;
}

export async function startViewProcess(
  root: string,
  mountpoint: string,
  stateFile: string,
  extraArgs: string[] = [],
  onLog?: (text: string) => void,
  env?: NodeJS.ProcessEnv,
  command: SelfCommand = { node: process.execPath, cli: CLI_ENTRY },
): Promise<ViewProcess> {
  // The supervisor passes node and the CLI as paths in the real tree (fs/service/self-command.ts).
  const child = spawn(command.node, [command.cli, '--root', root, ...extraArgs, 'mount'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: env && { ...process.env, ...env },
    // Its own process group: a signal meant for the caller's group must not stop a view that still has users.
    detached: true,
  });
  const log = keepLogTail(child.stderr!, onLog);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const deadline = Date.now() + 15000;
  // Ready when this child has written its state (a killed predecessor may have left a dead mount and its state file).
  const ready = () => {
    try {
      return isMountPoint(mountpoint) && (JSON.parse(fs.readFileSync(stateFile, 'utf8')) as ViewState).pid === child.pid;
    } catch {
      return false;
    }
  };
  while (!ready()) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`the view exited with ${child.exitCode ?? child.signalCode}: ${log().trim()}`);
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`the view did not mount within 15 s: ${log().trim()}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    child,
    mountpoint,
    stateFile,
    log,
    state: () => {
      try {
        return JSON.parse(fs.readFileSync(stateFile, 'utf8')) as ViewState;
      } catch {
        return undefined;
      }
    },
    stop: async (timeoutMs = 20000) => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}
