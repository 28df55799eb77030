/** What the supervisor's fault and rest suites share: reading the root's state, and cleaning up after a fault. */
import * as fs from 'fs';
import { abortConnection, fuseMountsBelow } from '../../fs/fuse/fusectl';
import { catches } from '../../fs/service/orphan-watch';
import { readLinkState } from '../../fs/switch/link';
import type { OpsSandbox } from './ops-sandbox';
import { waitFor } from './view-sandbox';

export const linkState = (ops: OpsSandbox) => readLinkState(ops.paths).state;
export const viewPid = (ops: OpsSandbox) => JSON.parse(fs.readFileSync(ops.paths.viewState, 'utf8')).pid as number;

/** Milliseconds from `t0` until R/usr is on the real tree, polled every 5 ms; -1 after `timeoutMs`. */
export async function backOnRealAfter(ops: OpsSandbox, t0: number, timeoutMs: number): Promise<number> {
  return (await waitFor(() => linkState(ops) === 'real', timeoutMs, 5)) < 0 ? -1 : Date.now() - t0;
}

/** What runs in process `pid`: its executable and resident set (KiB); undefined once it is gone. */
export function processImage(pid: number): { exe: string; rssKiB: number } | undefined {
  try {
    const rss = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return { exe: fs.readlinkSync(`/proc/${pid}/exe`), rssKiB: rss ? Number(rss[1]) : 0 };
  } catch {
    return undefined;
  }
}

/**
 * Whether supervisor `pid` rests: guard/rest.c runs in it, its handlers in place (it catches
 * SIGURG, the last it takes: a signal sent now is not lost).
 */
export const resting = (pid: number) => /fscache-guard$/.test(processImage(pid)?.exe ?? '') && catches(pid, 'SIGURG');

/**
 * After a test that may have stopped processes or hung the view: the stopped ones continued (a
 * stopped process cannot exit), every FUSE connection below the root aborted (an unaborted hung
 * mount would hang the cleanup), then the sandbox disposed.
 */
export async function disposeAfterFaults(ops: OpsSandbox | undefined, stopped: number[]): Promise<void> {
  for (const pid of stopped.splice(0)) {
    try {
      process.kill(pid, 'SIGCONT');
    } catch {
      // gone
    }
  }
  if (ops) for (const m of fuseMountsBelow(ops.root)) abortConnection(m.minor);
  await ops?.dispose();
}
