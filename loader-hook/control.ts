/**
 * Starting and stopping the randomization daemon as a background process, for `fscache start`
 * and `stop`: `startDaemon` spawns `fscache daemon` in its own process group with its log in
 * R/run/fscache/hook-daemon.log and its pid in R/run/fscache/hook-daemon.pid, and returns once
 * its socket answers; `stopDaemon` sends SIGTERM and waits. Both idempotent. `reviveDaemon`: the
 * supervisor's restart of a daemon that died (nothing else would: launches then miss for good),
 * or, asked by the view, of one that exited idle (its pid file then says IDLE).
 */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as path from 'path';
import { FsCacheError } from '../core/errors';
import type { Paths } from '../core/paths';
import { randomizerNodeFlags } from '../elf/node-flags';
import { selfCommand } from '../fs/service/self-command';
import { hookPaths } from './hook-paths';

/** What an idle daemon leaves in its pid file: started again on demand only (daemon_idle_seconds). */
export const IDLE_MARK = 'idle';

/** Whether the daemon exited idle and is started again at the view's next miss. */
export function daemonIdle(paths: Paths): boolean {
  try {
    return fs.readFileSync(hookPaths(paths).pidFile, 'utf8').trim() === IDLE_MARK;
  } catch {
    return false;
  }
}

/** The daemon's pid if it runs (pid file names a live `fscache ... daemon` process). */
export function daemonPid(paths: Paths): number | undefined {
  try {
    const pid = Number(fs.readFileSync(hookPaths(paths).pidFile, 'utf8').trim());
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return cmd.includes('daemon') && cmd.some((a) => a.endsWith('main.js')) ? pid : undefined;
  } catch {
    return undefined;
  }
}

function answers(sock: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(sock);
    c.once('connect', () => { c.destroy(); resolve(true); });
    c.once('error', () => resolve(false));
  });
}

export async function startDaemon(paths: Paths, configFile?: string, timeoutMs = 10_000): Promise<number> {
  const running = daemonPid(paths);
  if (running) return running;
  const hp = hookPaths(paths);
  fs.mkdirSync(path.dirname(hp.pidFile), { recursive: true, mode: 0o755 });
  const log = fs.openSync(hp.logFile, 'a', 0o640);
  const self = selfCommand(paths); // node and the CLI from the real tree, never through the view
  const args = [self.cli, '--root', paths.root, ...(configFile ? ['--config', configFile] : []), 'daemon'];
  // The daemon's Node runs with the randomizer's flags (see elf/node-flags.ts).
  const child = spawn(self.node, [...randomizerNodeFlags(), ...args], { detached: true, stdio: ['ignore', log, log] });
  fs.closeSync(log);
  child.unref();
  fs.writeFileSync(hp.pidFile, `${child.pid}\n`);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) break;
    if (await answers(hp.socket)) return child.pid!;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new FsCacheError('degraded', `the hook daemon did not start; see ${hp.logFile}`);
}

/**
 * For the supervisor: starts the daemon again if `start` started one (its pid file is there) and
 * it is gone. Returns the new pid, or undefined when nothing had to be done.
 */
export async function reviveDaemon(paths: Paths, configFile?: string, demanded = false): Promise<number | undefined> {
  if (!fs.existsSync(hookPaths(paths).pidFile) || daemonPid(paths)) return undefined;
  // Exited idle: it comes back when the view asks, not on the next check.
  if (daemonIdle(paths) && !demanded) return undefined;
  return startDaemon(paths, configFile);
}

export async function stopDaemon(paths: Paths, timeoutMs = 10_000): Promise<void> {
  const pid = daemonPid(paths);
  const hp = hookPaths(paths);
  // The pid file first: a supervisor seeing the daemon gone must not start it again (reviveDaemon).
  fs.rmSync(hp.pidFile, { force: true });
  if (pid) {
    process.kill(pid, 'SIGTERM');
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline && fs.existsSync(`/proc/${pid}`)) await new Promise((r) => setTimeout(r, 50));
    if (fs.existsSync(`/proc/${pid}`)) process.kill(pid, 'SIGKILL');
  }
  fs.rmSync(hp.pidFile, { force: true });
}
