/**
 * The loader hook with the view (issue 13, item 8): a randomizable library in the real tree's
 * /usr/lib, library_dirs = usr/lib, `fscache start` in view mode with the hook on, and a program
 * launched in a chroot of R through R/usr with a login's environment (LD_AUDIT from
 * R/etc/environment). It maps the randomized image, and the refusal list names only what was
 * refused (a library reached through /usr/lib that lies outside library_dirs, with its reason).
 * Then a power cut (item 2): the leftover LD_AUDIT must be harmless.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { parseConfig } from '../../core/config';
import { switchLink } from '../../fs/switch/link';
import { derivePaths, Paths } from '../../core/paths';
import { keyOf } from '../../loader-hook/images';
import { identityOf } from '../../core/identity';
import { fuseAvailable } from '../helpers/view-sandbox';
import { FIX } from './sandbox';
import { abortFuseBelow, inChroot, launchHeld, makeViewRoot, unmountBelow, ViewRoot } from './view-root';

const DEMO = path.join(__dirname, '..', '..', 'loader-hook', 'demo', 'libfscachedemo.c');
// serve_images = off: the auditor's way through the view (served.test.ts has the view's own).
const CONF = 'library_dirs = usr/lib\nserve_images = off\non_miss = wait\nmiss_wait_ms = 30000\n' +
  (process.env.FSCACHE_TEST_SESSION ? `fuse_session = ${process.env.FSCACHE_TEST_SESSION}\n` : '');
const RANDOMIZE = ['-O2', '-fPIC', '-ffunction-sections', '-fno-inline', '-shared', '-Wl,--emit-relocs'];

const skip = fuseAvailable();
const run = skip ? describe.skip : describe;

interface Refusal { library: string; reason: string; count: number; last: number }

run('loader hook with the view', () => {
  let vr: ViewRoot;
  let paths: Paths;
  let realLib: string;
  let dlopenLib: string;

  beforeAll(() => {
    vr = makeViewRoot(CONF);
    paths = derivePaths(vr.root, parseConfig(CONF, 'test'));
    const lib = path.join(vr.realTree, 'lib');
    realLib = path.join(lib, 'libhv.so');
    dlopenLib = path.join(lib, 'libhvd.so');
    execFileSync('gcc', [...RANDOMIZE, '-Wl,-soname,libhv.so', '-o', realLib, DEMO]);
    execFileSync('gcc', [...RANDOMIZE, '-Wl,-soname,libhvd.so', '-o', dlopenLib, DEMO]);
    // Reached as /usr/lib/libout.so, but the file lies in R/opt: outside library_dirs.
    const opt = path.join(vr.root, 'opt', 'outside');
    fs.mkdirSync(opt, { recursive: true, mode: 0o755 });
    execFileSync('gcc', [...RANDOMIZE, '-Wl,-soname,libout.so', '-o', path.join(opt, 'libout.so'), path.join(FIX, 'libb.c')]);
    fs.symlinkSync('/opt/outside/libout.so', path.join(lib, 'libout.so'));
    for (const f of [realLib, dlopenLib, path.join(opt, 'libout.so')]) fs.chmodSync(f, 0o644);
    execFileSync('gcc', ['-O2', '-o', path.join(vr.realTree, 'bin', 'viewprobe'), path.join(FIX, 'viewprobe.c'),
      `-L${lib}`, `-L${opt}`, '-lhv', '-lout', '-ldl', '-Wl,-rpath,/usr/lib']);
  });

  afterAll(() => {
    if (!vr) return;
    vr.cli('stop');
    vr.dispose();
  });

  test('a /usr library launched through the view with a login environment maps its randomized image', async () => {
    const s = vr.cli('start');
    expect(s.stderr).not.toMatch(/loader hook not enabled/);
    expect(s.status).toBe(0);
    expect(fs.readlinkSync(paths.usrLink)).toBe(path.relative(vr.root, paths.viewMount));
    const env = vr.loginEnv();
    // fscache runs from a checkout outside R: its auditor is copied to the root filesystem, not to flash or R/run.
    expect(env.LD_AUDIT).toBe('/etc/fscache/fscache-audit.so');

    const plain = spawnSync('/usr/sbin/chroot', inChroot(vr.root, ['/usr/bin/viewprobe'], { PATH: '/usr/bin:/bin' }), { env: {}, encoding: 'utf8', input: '', timeout: 60_000 });
    expect(plain.status).toBe(0);
    const want = /checksum (\d+)/.exec(plain.stdout)![1];

    const held = await launchHeld(vr.root, ['/usr/bin/viewprobe', '/usr/lib/libhvd.so'], env);
    try {
      const epoch = fs.readFileSync(path.join(paths.runDir, 'epoch'), 'utf8').split(' ')[0];
      const image = (f: string) => path.join(paths.images, epoch, `${keyOf(identityOf(fs.statSync(f, { bigint: true })))}.so`);
      expect(held.maps).toContain(`${paths.viewMount}/lib/x86_64-linux-gnu/libc.so.6`); // it did run through the view
      // Later stage (RUNPATH /usr/lib) and LA_SER_ORIG (dlopen of /usr/lib/libhvd.so), both through the view.
      expect(held.maps).toContain(image(realLib));
      expect(held.maps).toContain(image(dlopenLib));
      expect(held.maps).not.toMatch(/libhv\.so|libhvd\.so/);
      expect(held.out).toContain(`checksum ${want}\n`);
      expect(held.out).toContain(`dlopen checksum ${want}\n`);
      expect(fs.readFileSync(image(realLib)).equals(fs.readFileSync(realLib))).toBe(false);
    } finally {
      expect(await held.release()).toEqual({ status: 0, out: expect.any(String), err: '' });
    }

    const images = JSON.parse(vr.cli('images', '--json').stdout) as { images: { source: string }[]; refusals: Refusal[] };
    expect(images.images.map((i) => i.source)).toEqual(expect.arrayContaining([realLib, dlopenLib]));
    expect(images.refusals.filter((r) => /libhvd?\.so/.test(r.library))).toEqual([]);
    expect(images.refusals).toContainEqual(expect.objectContaining({
      library: path.join(vr.root, 'opt', 'outside', 'libout.so'), reason: 'outside the configured library directories', count: 1,
    }));
    const text = vr.cli('images').stdout;
    expect(text).toMatch(/^refused \S+\/opt\/outside\/libout\.so {2}outside the configured library directories {2}1x, last \d{4}-/m);
  });

  test('after a power cut the leftover LD_AUDIT is harmless: no run dir, no store, no output, exit 0', async () => {
    const env = vr.loginEnv();
    expect(env.LD_AUDIT).toBeTruthy();
    const epochFile = fs.readFileSync(path.join(paths.runDir, 'epoch'));
    // kill -9 of every fscache process, the view's connection gone, R/run empty, the flash store not mounted.
    for (const pid of vr.fscachePids()) process.kill(pid, 'SIGKILL');
    abortFuseBelow(vr.root);
    unmountBelow(paths.runDir);
    fs.rmSync(path.join(vr.root, 'run'), { recursive: true, force: true });
    fs.mkdirSync(path.join(vr.root, 'run'));
    fs.renameSync(paths.flash, `${paths.flash}.unmounted`);
    fs.mkdirSync(paths.flash);
    // What the persistent link resolves to after a power cut is the link's business (item 2): the real tree.
    switchLink(paths, 'real');

    const launch = (argv: string[]) => spawnSync('/usr/sbin/chroot', inChroot(vr.root, argv, env), { env: {}, encoding: 'utf8', input: '', timeout: 60_000 });
    for (const argv of [['/usr/bin/sh', '-c', 'true'], ['/usr/bin/viewprobe', '/usr/lib/libhvd.so']]) {
      const r = launch(argv);
      expect([r.stderr, r.status]).toEqual(['', 0]);
    }
    // The auditor did load (and stayed silent): it is mapped by a held launch.
    const held = await launchHeld(vr.root, ['/usr/bin/viewprobe'], env);
    expect(held.maps).toContain(path.join(vr.root, 'etc', 'fscache', 'fscache-audit.so'));
    expect(held.maps).toContain(realLib);
    expect(await held.release()).toEqual({ status: 0, out: expect.any(String), err: '' });

    // A run dir that survived (not a tmpfs) with the epoch file and a dead socket, the store still gone.
    fs.mkdirSync(paths.runDir, { recursive: true });
    fs.writeFileSync(path.join(paths.runDir, 'epoch'), epochFile, { mode: 0o644 });
    fs.writeFileSync(path.join(paths.runDir, 'hook.sock'), '');
    const r = launch(['/usr/bin/viewprobe', '/usr/lib/libhvd.so']);
    expect([r.stderr, r.status]).toEqual(['', 0]);
  });
});
