/** What the supervisor's fault and rest suites share: reading the root's state, and cleaning up after a fault. */
import * as fs from 'fs';
import { abortConnection, fuseMountsBelow } from '../../fs/fuse/fusectl';
import { readLinkState } from '../../fs/switch/link';
import type { OpsSandbox } from './ops-sandbox';

export const linkState = (ops: OpsSandbox) => readLinkState(ops.paths).state;
export const viewPid = (ops: OpsSandbox) => JSON.parse(fs.readFileSync(ops.paths.viewState, 'utf8')).pid as number;

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
