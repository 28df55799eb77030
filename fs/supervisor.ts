/**
 * The supervisor (`fscache start --foreground`, what the init systems run): starts the
 * view process, checks it by reading through it, switches R/usr to it, and watches it.
 * If the view dies, R/usr goes back to the real tree at once (the exit is seen within
 * milliseconds) and the view is restarted with back-off. On SIGTERM the link goes back
 * first, then the view is told to detach; it keeps serving its last users by itself.
 */
import * as fs from 'fs';
import * as path from 'path';
import { switchLink } from './link';
import type { Logger } from './log';
import type { Paths } from './paths';
import { isMountPoint } from './preflight';
import { startViewProcess, ViewProcess } from './view-process';

export interface SupervisorState {
  pid: number;
  startedAt: number;
  state: 'starting' | 'serving' | 'retrying' | 'stopping';
  viewPid: number | null;
  restarts: number;
  lastFailure: { at: number; reason: string } | null;
  nextRetryAt: number | null;
}

export function supervisorStateFile(paths: Paths): string {
  return path.join(paths.runDir, 'supervisor.json');
}

export function readSupervisorState(paths: Paths): SupervisorState | undefined {
  try {
    const s = JSON.parse(fs.readFileSync(supervisorStateFile(paths), 'utf8')) as SupervisorState;
    process.kill(s.pid, 0);
    return s;
  } catch {
    return undefined;
  }
}

const BACKOFF_MS = [1000, 2000, 4000, 8000, 16000, 30000, 60000];
const HEALTH_TIMEOUT_MS = 5000;

/**
 * Reads through the view what it must show: the real tree's top-level names and the
 * first 64 KiB of a file, compared with the real tree. Asynchronous with a timeout, so
 * a hung view fails the check instead of hanging the supervisor.
 */
export async function healthCheck(paths: Paths): Promise<string | undefined> {
  const check = async (): Promise<string | undefined> => {
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
  const timeout = new Promise<string>((resolve) => (timer = setTimeout(() => resolve(`no answer within ${HEALTH_TIMEOUT_MS} ms`), HEALTH_TIMEOUT_MS)));
  try {
    return await Promise.race([check().catch((err) => `read failed: ${(err as Error).message}`), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export class Supervisor {
  private view?: ViewProcess;
  private stopping = false;
  private retryTimer?: NodeJS.Timeout;
  private readonly state: SupervisorState = {
    pid: process.pid, startedAt: Date.now(), state: 'starting', viewPid: null, restarts: 0, lastFailure: null, nextRetryAt: null,
  };
  private done!: () => void;

  constructor(
    private readonly paths: Paths,
    private readonly configArgs: string[],
    private readonly log: Logger,
  ) {}

  /** Runs until SIGTERM/SIGINT. */
  run(): Promise<void> {
    const finished = new Promise<void>((resolve) => (this.done = resolve));
    for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(sig, () => void this.stop(sig));
    this.writeState();
    void this.launch();
    return finished;
  }

  private writeState(): void {
    const file = supervisorStateFile(this.paths);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(`${file}.tmp`, JSON.stringify(this.state, null, 2));
    fs.renameSync(`${file}.tmp`, file);
  }

  private fail(reason: string): void {
    this.state.lastFailure = { at: Date.now(), reason };
    this.log.error(reason);
    if (this.stopping) return;
    const delay = BACKOFF_MS[Math.min(this.state.restarts, BACKOFF_MS.length - 1)];
    this.state.restarts++;
    this.state.state = 'retrying';
    this.state.nextRetryAt = Date.now() + delay;
    this.writeState();
    this.retryTimer = setTimeout(() => void this.launch(), delay);
  }

  private async launch(): Promise<void> {
    if (this.stopping) return;
    this.state.state = 'starting';
    this.state.nextRetryAt = null;
    this.writeState();
    let view: ViewProcess;
    try {
      view = await startViewProcess(this.paths.root, this.paths.viewMount, this.paths.viewState, this.configArgs, (t) => process.stderr.write(t));
    } catch (err) {
      return this.fail(`view did not start: ${(err as Error).message}`);
    }
    this.view = view;
    this.state.viewPid = view.child.pid ?? null;
    view.child.once('exit', (code, signal) => this.onViewExit(view, code, signal));
    const problem = await healthCheck(this.paths);
    if (problem) {
      view.child.kill('SIGKILL');
      return; // onViewExit reports it
    }
    if (this.stopping || this.view !== view || view.child.exitCode !== null) return;
    switchLink(this.paths, 'view');
    this.state.state = 'serving';
    this.writeState();
    this.log.info(`serving: ${this.paths.usrLink} -> view (view pid ${view.child.pid})`);
  }

  private onViewExit(view: ViewProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.view !== view) return;
    this.view = undefined;
    this.state.viewPid = null;
    // First the link: launches must not resolve through a dead view.
    switchLink(this.paths, 'real');
    if (this.stopping) return;
    const tail = view.log().trim().split('\n').slice(-2).join(' | ');
    this.fail(`view exited (${signal ?? `code ${code}`}); ${this.paths.usrLink} -> real tree${tail ? `; last log: ${tail}` : ''}`);
  }

  async stop(sig: string): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.log.info(`${sig}: switching ${this.paths.usrLink} to the real tree and detaching the view`);
    clearTimeout(this.retryTimer);
    this.state.state = 'stopping';
    switchLink(this.paths, 'real');
    this.writeState();
    const view = this.view;
    if (view && view.child.exitCode === null) {
      view.child.kill('SIGTERM');
      // Wait until the mount is detached; the view process itself may live on while users remain.
      const deadline = Date.now() + 10000;
      while (isMountPoint(this.paths.viewMount) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    }
    fs.rmSync(supervisorStateFile(this.paths), { force: true });
    this.done();
  }
}
