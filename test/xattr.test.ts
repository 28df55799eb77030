/**
 * Extended attributes through the view, read without any program. Installed inside the
 * /usr it serves, a view that ran getfattr found it through itself and deadlocked on the
 * first launch (issue 13). Here the view's PATH is the mount tools its sessions still run,
 * then the view's own bin: any other program would be looked up through the view itself.
 * Checked on both sessions from the host side, every call bounded: values, listings, a
 * missing name, a symlink (never followed), and a file capability that exec honours.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { startViewProcess } from '../fs/service/view-process';
import { runBounded } from './helpers/bounded';
import { createViewSandbox, fuseAvailable, ViewSandbox } from './helpers/view-sandbox';
import { afterEachDispose } from './helpers/cleanup';

const skip = fuseAvailable();
const maybe = skip ? describe.skip : describe;
if (skip) console.warn(`xattr tests skipped: ${skip}`);

/** The mount tools the sessions run (mount(8), umount(8), fusermount), and nothing else. */
function toolsOnlyPath(dir: string): string {
  fs.mkdirSync(dir);
  for (const tool of ['mount', 'umount', 'fusermount']) {
    const found = ['/usr/bin', '/bin', '/usr/sbin', '/sbin'].map((d) => path.join(d, tool)).find((p) => fs.existsSync(p));
    if (found) fs.symlinkSync(found, path.join(dir, tool));
  }
  return dir;
}

maybe.each(['kernel', 'libfuse2'])('xattrs through the view (fuse_session = %s)', (session) => {
  let vs: ViewSandbox | undefined;
  afterEachDispose(() => vs, () => (vs = undefined));

  test('values, listings and a file capability come through with no getfattr to run', async () => {
    vs = createViewSandbox({ copy: true, config: `fuse_session = ${session}\n` });
    const real = (rel: string) => path.join(vs!.paths.realTree, rel);
    fs.mkdirSync(real('bin'));
    fs.mkdirSync(real('share'));
    // A copy in the sandbox's real tree gets the capability, never the host's binary.
    fs.copyFileSync('/usr/bin/cat', real('bin/capcat'));
    fs.chmodSync(real('bin/capcat'), 0o755);
    execFileSync('setcap', ['cap_net_raw+ep', real('bin/capcat')]);
    fs.writeFileSync(real('share/note'), 'note');
    execFileSync('setfattr', ['-n', 'user.fscache', '-v', 'hello', real('share/note')]);
    execFileSync('setfattr', ['-n', 'user.empty', real('share/note')]);
    fs.writeFileSync(real('share/plain'), 'plain');
    fs.symlinkSync('note', real('share/link'));

    // As when installed in the /usr it serves: any other program would be looked up through
    // the view itself, and the view would wait for itself (the run below is bounded).
    const tools = toolsOnlyPath(path.join(vs.sandbox.root, 'mount-tools'));
    expect(fs.readdirSync(tools)).not.toContain('getfattr');
    const env = { PATH: `${tools}:${vs.inView('bin')}` };
    vs.view = await startViewProcess(vs.sandbox.root, vs.paths.viewMount, vs.paths.viewState, [], undefined, env);
    expect(vs.view.state()?.session).toBe(session);

    const mount = vs.paths.viewMount;
    // What getfattr (run here, on the host side) prints for a file, with the file's path cut out.
    const getfattr = async (args: string[], file: string, prefix: string) => {
      const r = await runBounded('getfattr', ['--absolute-names', '--no-dereference', ...args, file], { abortBelow: mount, timeoutMs: 10000 });
      return { code: r.code, out: (r.stdout + r.stderr).split(prefix).join('') };
    };
    for (const rel of ['bin/capcat', 'share/note', 'share/plain', 'share/link']) {
      for (const args of [['--dump', '--match=-', '--encoding=hex'], ['--name=security.capability', '--encoding=hex'], ['--name=user.none']]) {
        const through = await getfattr(args, vs.inView(rel), mount);
        expect({ rel, args, ...through }).toEqual({ rel, args, ...(await getfattr(args, real(rel), vs.paths.realTree)) });
      }
    }
    // The comparisons above are of something: the values are there.
    const note = await getfattr(['--dump', '--match=-'], vs.inView('share/note'), mount);
    expect(note.out).toContain('user.fscache="hello"');
    expect(note.out).toContain('user.empty');
    const getcap = await runBounded('getcap', [vs.inView('bin/capcat')], { abortBelow: mount, timeoutMs: 10000 });
    expect(getcap.stdout.trim()).toBe(`${vs.inView('bin/capcat')} cap_net_raw=ep`);

    // Honoured: with root's automatic capabilities off (securebits noroot), exec grants the
    // file's capability from the view exactly as from the real tree.
    const capEff = async (file: string) => {
      const r = await runBounded('setpriv', ['--securebits', '+noroot,+noroot_locked', '--inh-caps=-all', '--', file, '/proc/self/status'], { abortBelow: mount, timeoutMs: 10000 });
      return /^CapEff:\s*(\w+)$/m.exec(r.stdout)?.[1];
    };
    expect(await capEff(real('bin/capcat'))).toBe('0000000000002000');
    expect(await capEff(vs.inView('bin/capcat'))).toBe('0000000000002000');
  });
});
