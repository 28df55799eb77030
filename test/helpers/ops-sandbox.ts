/**
 * A sandbox root as an administrator finds it before `fscache setup`: R/usr a real
 * directory. After setup, the host's /usr is bound read-only at R/usr.real (a bind
 * mount point cannot be renamed, so setup runs on the empty directory first), or the
 * tree of copies stays (copy: true).
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { defaultConfig, parseConfig } from '../../core/config';
import { derivePaths, Paths } from '../../core/paths';
import { isMountPoint } from '../../fs/service/preflight';
import { makeSandbox, Sandbox } from '../../dev/sandbox';
import { CLI_ENTRY } from '../../fs/service/view-process';
import { readSupervisorState } from '../../fs/service/supervisor';
import { processesOfRoot } from './bounded';

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface OpsSandbox {
  sandbox: Sandbox;
  paths: Paths;
  root: string;
  cli(args: string[]): CliResult;
  /** Binds the host's /usr read-only at R/usr.real (after setup). */
  bindHostUsr(): void;
  dispose(): Promise<void>;
}

export function createOpsSandbox(options: { config?: string } = {}): OpsSandbox {
  const sandbox = makeSandbox({ beforeSetup: true, prefix: 'fscache-ops-' });
  // FSCACHE_TEST_SESSION runs the same tests over another FUSE session (.ci/run does both).
  const configText = (options.config ?? '') + (process.env.FSCACHE_TEST_SESSION ? `fuse_session = ${process.env.FSCACHE_TEST_SESSION}\n` : '');
  const config = configText ? parseConfig(configText, 'test config') : defaultConfig();
  if (configText) fs.writeFileSync(path.join(sandbox.root, 'etc', 'fscache.conf'), configText);
  const paths = derivePaths(sandbox.root, config);
  const ops: OpsSandbox = {
    sandbox,
    paths,
    root: sandbox.root,
    cli(args) {
      const r = spawnSync(process.execPath, [CLI_ENTRY, '--root', sandbox.root, ...args], { encoding: 'utf8', timeout: 60000 });
      return { code: r.status, stdout: r.stdout, stderr: r.stderr };
    },
    bindHostUsr: () => sandbox.bindReadOnly('/usr', paths.realTree),
    async dispose() {
      const sup = readSupervisorState(paths);
      if (sup) ops.cli(['stop']);
      let view: number | undefined;
      try {
        view = JSON.parse(fs.readFileSync(paths.viewState, 'utf8')).pid;
      } catch {
        view = undefined;
      }
      if (view) {
        try {
          process.kill(view, 'SIGKILL');
        } catch {
          // gone
        }
      }
      if (isMountPoint(paths.viewMount)) spawnSync('fusermount', ['-uz', paths.viewMount]);
      // Whatever else still runs for this root (a hook daemon or a guard whose supervisor a test killed).
      for (const pid of processesOfRoot(sandbox.root)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
      sandbox.cleanup();
    },
  };
  return ops;
}
