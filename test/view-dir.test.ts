/**
 * The view's mount point R/usr.view: with nothing mounted it is the real tree by its links,
 * refreshed to match the real tree, refusing what fscache did not put there; the link
 * state tells the view from the mirror by what is mounted; setup takes over an older
 * fscache's link into /run.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { defaultConfig } from '../core/config';
import { linkTargetPath, pendingLinkPath, readLinkState, switchLink } from '../fs/switch/link';
import { derivePaths, Paths } from '../core/paths';
import { CLI_ENTRY } from '../core/package-root';
import { makeSandbox, Sandbox } from '../dev/sandbox';
import { refreshViewDir } from '../fs/view/view-dir';

const skip = process.getuid?.() !== 0 ? 'needs root (mounts, chroot)' : undefined;
const maybe = skip ? describe.skip : describe;
if (skip) console.warn(`view-dir tests skipped: ${skip}`);

maybe('the view mount point', () => {
  let sandbox: Sandbox | undefined;
  let paths: Paths;
  beforeEach(() => {
    sandbox = makeSandbox({ prefix: 'fscache-viewdir-' }); // R/usr.real: the host's /usr, read-only; R/usr -> usr.view
    paths = derivePaths(sandbox.root, defaultConfig());
  });
  afterEach(() => {
    sandbox?.cleanup();
    sandbox = undefined;
  });
  const chroot = (argv: string[]) => spawnSync(sandbox!.chrootArgs(argv)[0], sandbox!.chrootArgs(argv)[1], { encoding: 'utf8', timeout: 30000, env: { PATH: '/usr/bin:/bin' } });

  test('unmounted, it is the real tree: programs run through R/usr -> usr.view', () => {
    expect(fs.readlinkSync(paths.usrLink)).toBe(linkTargetPath(paths, 'view'));
    const first = refreshViewDir(paths);
    expect(first.added).toBe(fs.readdirSync(paths.realTree).length);
    expect(fs.readlinkSync(path.join(paths.viewMount, 'bin'))).toBe('../usr.real/bin');
    const st = fs.lstatSync(paths.viewMount);
    expect([st.uid, st.mode & 0o7777]).toEqual([0, 0o755]);
    expect(chroot(['/usr/bin/sh', '-c', 'echo ok'])).toMatchObject({ status: 0, stdout: 'ok\n' });
    expect(chroot(['/usr/bin/python3', '-c', 'import json; print(json.dumps(1))'])).toMatchObject({ status: 0, stdout: '1\n' });
    expect(refreshViewDir(paths)).toEqual({ added: 0, replaced: 0, removed: 0 });
  });

  test('a refresh removes stale links, replaces wrong ones, and leaves no temporary names', () => {
    refreshViewDir(paths);
    fs.symlinkSync('../usr.real/gone', path.join(paths.viewMount, 'gone'));
    fs.unlinkSync(path.join(paths.viewMount, 'lib'));
    fs.symlinkSync('/etc', path.join(paths.viewMount, 'lib'));
    fs.symlinkSync('x', path.join(paths.viewMount, '.fscache-new.share'));
    expect(refreshViewDir(paths)).toEqual({ added: 0, replaced: 1, removed: 1 });
    expect(fs.readdirSync(paths.viewMount).sort()).toEqual(fs.readdirSync(paths.realTree).sort());
    expect(fs.readlinkSync(path.join(paths.viewMount, 'lib'))).toBe('../usr.real/lib');
  });

  test('anything but a link under the mount point, or a mount point others may write, is refused', () => {
    refreshViewDir(paths);
    fs.writeFileSync(path.join(paths.viewMount, 'precious'), 'keep');
    expect(() => refreshViewDir(paths)).toThrow(/is not empty: it holds precious/);
    expect(fs.readFileSync(path.join(paths.viewMount, 'precious'), 'utf8')).toBe('keep');
    fs.rmSync(path.join(paths.viewMount, 'precious'));
    fs.chmodSync(paths.viewMount, 0o775);
    expect(() => refreshViewDir(paths)).toThrow(/owned by root and writable by root only .*mode 775/);
    fs.chmodSync(paths.viewMount, 0o755);
    fs.chownSync(paths.viewMount, 65534, 65534);
    expect(() => refreshViewDir(paths)).toThrow(/uid 65534/);
  });

  test('the link state: view or mirror by what is mounted, the configured mode when nothing is', () => {
    refreshViewDir(paths);
    expect(readLinkState(paths).state).toBe('view');
    expect(readLinkState(paths, 'mirror').state).toBe('mirror');
    const copy = path.join(sandbox!.root, 'tmp', 'copy');
    fs.mkdirSync(copy);
    execFileSync('mount', ['--bind', '-o', 'ro', copy, paths.viewMount]);
    expect(readLinkState(paths, 'view').state).toBe('mirror');
    expect(() => refreshViewDir(paths)).toThrow(/is mounted/);
    execFileSync('umount', [paths.viewMount]);
    switchLink(paths, 'real');
    expect(readLinkState(paths, 'mirror')).toEqual({ state: 'real', target: 'usr.real' });
    expect(fs.existsSync(pendingLinkPath(paths))).toBe(false);
  });

  test("setup takes over an older fscache's link into /run (which a reboot leaves dangling)", () => {
    for (const old of ['run/fscache/view', 'fscache/mirror']) {
      fs.unlinkSync(paths.usrLink);
      fs.symlinkSync(old, paths.usrLink);
      expect(readLinkState(paths).state).toBe('foreign');
      const r = spawnSync(process.execPath, [CLI_ENTRY, '--root', sandbox!.root, 'setup', '--yes'], { encoding: 'utf8', timeout: 30000 });
      expect(r).toMatchObject({ status: 0, stdout: expect.stringMatching(/set up: .*usr -> usr.real/) });
      expect(fs.readlinkSync(path.join(paths.viewMount, 'bin'))).toBe('../usr.real/bin');
    }
  });
});
