/** The OpenRC and systemd files drive the same CLI, in a sandbox root. */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createOpsSandbox, OpsSandbox } from './helpers/ops-sandbox';
import { fuseAvailable } from './helpers/view-sandbox';
import { linkTargetPath } from '../fs/link';
import { CLI_ENTRY } from '../fs/view-process';

const INIT = path.resolve(__dirname, '..', 'initscripts');

/** A stand-in for /usr/bin/fscache that runs this checkout against the sandbox root. */
function wrapper(dir: string, root: string): string {
  const file = path.join(dir, 'fscache');
  fs.writeFileSync(file, `#!/bin/sh\nexec ${process.execPath} ${CLI_ENTRY} --root ${root} "$@"\n`, { mode: 0o755 });
  return file;
}

const hasAnalyze = spawnSync('systemd-analyze', ['--version']).status === 0;
(hasAnalyze ? test : test.skip)('systemd units pass systemd-analyze verify', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-units-'));
  try {
    const bin = wrapper(dir, '/nonexistent-root');
    for (const unit of fs.readdirSync(path.join(INIT, 'systemd'))) {
      fs.writeFileSync(path.join(dir, unit), fs.readFileSync(path.join(INIT, 'systemd', unit), 'utf8').replaceAll('/usr/bin/fscache', bin));
    }
    const units = fs.readdirSync(path.join(INIT, 'systemd')).map((u) => path.join(dir, u));
    const r = spawnSync('systemd-analyze', ['verify', '--man=no', ...units], { encoding: 'utf8' });
    expect({ code: r.status, out: r.stdout + r.stderr }).toEqual({ code: 0, out: '' });
    const service = fs.readFileSync(path.join(INIT, 'systemd', 'fscache.service'), 'utf8');
    expect(service).toMatch(/^KillMode=process$/m); // the view must outlive the supervisor's stop
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
if (!hasAnalyze) console.warn('systemd unit check skipped: systemd-analyze is missing');

// Debian's openrc package would replace this machine's init configuration (it is not
// installed here and a test must not touch /etc), so the script's functions run under
// sh with OpenRC's ebegin/eend defined, driving the real CLI in a sandbox root.
const skip = fuseAvailable();
(skip ? describe.skip : describe)('OpenRC script functions', () => {
  let ops: OpsSandbox | undefined;
  afterEach(async () => {
    await ops?.dispose();
    ops = undefined;
  });

  test('declares its dependencies and extra commands; start, sync and stop drive the CLI', () => {
    ops = createOpsSandbox();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-openrc-'));
    try {
      const bin = wrapper(dir, ops.root);
      const script = path.join(INIT, 'openrc', 'fscache');
      expect(fs.readFileSync(script, 'utf8').split('\n')[0]).toBe('#!/sbin/openrc-run');
      const run = (fn: string) =>
        spawnSync('sh', ['-c', `ebegin() { echo "* $*"; }; eend() { echo "eend $1"; return $1; }; need() { echo "need $*"; }; after() { echo "after $*"; }; before() { echo "before $*"; }; . "$0"; ${fn}`, script],
          { encoding: 'utf8', env: { PATH: process.env.PATH, FSCACHE: bin } });
      expect(run('echo "$extra_commands"; depend').stdout).toMatch(/^sync\nneed localmount\nafter bootmisc\n/);

      // /usr is still a directory: start refuses, as the blog's script did, and eend reports it.
      const refused = run('start');
      expect(refused.status).toBe(3);
      expect(refused.stdout).toMatch(/eend 3/);
      expect(refused.stderr).toMatch(/is a directory, not fscache's link/);

      execFileSync(bin, ['setup', '--yes']);
      fs.mkdirSync(path.join(ops.paths.realTree, 'bin'));
      fs.writeFileSync(path.join(ops.paths.realTree, 'bin', 'tool'), 'x');
      expect(run('start')).toMatchObject({ status: 0, stdout: expect.stringMatching(/\* Starting fscache\nstarted: .*\neend 0/) });
      expect(fs.readlinkSync(ops.paths.usrLink)).toBe(linkTargetPath(ops.paths, 'view'));
      expect(run('sync')).toMatchObject({ status: 0 });
      expect(run('stop')).toMatchObject({ status: 0, stdout: expect.stringMatching(/stopped/) });
      expect(fs.readlinkSync(ops.paths.usrLink)).toBe('usr.real');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
