/**
 * Randomized images served by the view under the libraries' own names (issue 16): a randomizable
 * library in the real tree's /usr/lib and three programs using it through the view, none with
 * LD_AUDIT: a plain one under `env -i`, one with a login's environment, and a setuid-root copy
 * run as nobody (ld.so's secure mode). Each runs the library with its functions at shuffled
 * offsets (dladdr against nm of the original) and prints the original's checksum; /proc/PID/maps
 * shows the library's own path and no auditor. Then `fscache rerandomize` while a program calls
 * the library in a loop: it keeps its layout to its end, and the next launches get a new one. And
 * the daemon on demand: it exits after daemon_idle_seconds, and a miss has it started again.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { parseConfig } from '../../core/config';
import { derivePaths, Paths } from '../../core/paths';
import { daemonIdle, daemonPid } from '../../loader-hook/control';
import { fuseAvailable } from '../helpers/view-sandbox';
import { FIX } from './sandbox';
import { inChroot, launchHeld, makeViewRoot, parseDemo, ViewRoot, whileHeld } from './view-root';

const DEMO = path.join(__dirname, '..', '..', 'loader-hook', 'demo');
const CONF = 'library_dirs = usr/lib\naccess_flush_ms = 200\ndaemon_idle_seconds = 3\n' +
  (process.env.FSCACHE_TEST_SESSION ? `fuse_session = ${process.env.FSCACHE_TEST_SESSION}\n` : '');
const RANDOMIZE = ['-O2', '-fPIC', '-ffunction-sections', '-fno-inline', '-shared', '-Wl,--emit-relocs'];
const NOBODY = ['/usr/bin/setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'];

const skip = fuseAvailable();
const run = skip ? describe.skip : describe;
if (skip) console.log(`served images: skipped: ${skip}`);
// libfuse2 names nodes by path: what a path was answered as stays until the view is renewed (a new
// epoch asks for a renewal), so the launch-by-launch expectations are the kernel session's, and
// libfuse2 has a test of its own.
const libfuse2 = process.env.FSCACHE_TEST_SESSION === 'libfuse2';
const kernelTest = libfuse2 ? test.skip : test;
const libfuse2Test = libfuse2 ? test : test.skip;
if (!skip) {
  console.log(libfuse2 ? 'served images: the kernel session\'s launch-by-launch tests are skipped under libfuse2 (a path keeps its answer until the view is renewed)'
    : 'served images: the libfuse2 test is skipped here; .ci/run runs it with FSCACHE_TEST_SESSION=libfuse2');
}

async function until<T>(what: string, probe: () => T | undefined, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

run('randomized images served under the libraries\' names', () => {
  let vr: ViewRoot;
  let paths: Paths;
  let lib: string;
  /** Function offsets in the original library (nm), as hookdemo prints them. */
  const original: Record<string, number> = {};
  let checksum = '';

  const launch = (argv: string[]) => {
    const r = spawnSync('/usr/sbin/chroot', inChroot(vr.root, argv, { PATH: '/usr/bin:/bin' }), { env: {}, encoding: 'utf8', input: '', timeout: 60_000 });
    return { status: r.status, stderr: r.stderr, ...parseDemo(r.stdout ?? '') };
  };
  const shuffled = (offsets: Record<string, number>) => Object.keys(original).some((fn) => offsets[fn] !== original[fn]);

  beforeAll(() => {
    vr = makeViewRoot(CONF);
    paths = derivePaths(vr.root, parseConfig(CONF, 'test'));
    const libDir = path.join(vr.realTree, 'lib');
    lib = path.join(libDir, 'libfscachedemo.so');
    execFileSync('gcc', [...RANDOMIZE, '-Wl,-soname,libfscachedemo.so', '-o', lib, path.join(DEMO, 'libfscachedemo.c')]);
    fs.chmodSync(lib, 0o644);
    const bin = path.join(vr.realTree, 'bin');
    execFileSync('gcc', ['-O2', '-o', path.join(bin, 'svdemo'), path.join(DEMO, 'hookdemo.c'), `-L${libDir}`, '-lfscachedemo']);
    fs.copyFileSync(path.join(bin, 'svdemo'), path.join(bin, 'svdemo-suid'));
    fs.chmodSync(path.join(bin, 'svdemo-suid'), 0o4755);
    execFileSync('gcc', ['-O2', '-o', path.join(bin, 'callsloop'), path.join(FIX, 'callsloop.c'), `-L${libDir}`, '-lfscachedemo']);
    for (const m of execFileSync('nm', [lib], { encoding: 'utf8' }).matchAll(/^([0-9a-f]+) T demo_(\w+)$/gm)) original[m[2]] = parseInt(m[1], 16);
    expect(Object.keys(original).length).toBe(8);
  });

  afterAll(() => {
    if (!vr) return;
    vr.cli('stop');
    vr.dispose();
  });

  kernelTest('a plain, an env -i and a setuid program run as nobody all map the image under the library\'s name, no auditor', async () => {
    const s = vr.cli('start');
    expect(s.status).toBe(0);
    expect(s.stderr).toMatch(/LD_AUDIT not set/);
    expect(vr.loginEnv().LD_AUDIT).toBeUndefined();

    // The first launch misses: the original, and the view asks for the image.
    const first = launch(['/usr/bin/svdemo']);
    expect(first.status).toBe(0);
    expect(first.offsets).toEqual(original);
    checksum = first.checksum;
    const served = await until('the image served under the library\'s name', () => {
      const r = launch(['/usr/bin/svdemo']);
      return shuffled(r.offsets) ? r : undefined;
    });
    expect(served.checksum).toBe(checksum);

    const login = launch(['/usr/bin/env', 'HOME=/', 'LANG=C', '/usr/bin/svdemo']);
    const suid = launch([...NOBODY, '/usr/bin/svdemo-suid']);
    for (const r of [login, suid]) {
      expect({ status: r.status, stderr: r.stderr, checksum: r.checksum }).toEqual({ status: 0, stderr: '', checksum });
      // The same image for every process of the epoch.
      expect(r.offsets).toEqual(served.offsets);
    }

    // Held: its maps show the library's own path through the view, no auditor; it is setuid-root indeed.
    const held = await launchHeld(vr.root, [...NOBODY, '/usr/bin/svdemo-suid', 'hold'], { PATH: '/usr/bin:/bin' });
    try {
      expect(held.maps).toContain(`${paths.viewMount}/lib/libfscachedemo.so`);
      expect(held.maps).not.toMatch(/fscache-audit|images\//);
      expect(fs.readFileSync(`/proc/${held.pid}/status`, 'utf8')).toMatch(/^Uid:\s+65534\s+0\s/m);
      expect(parseDemo(held.out).offsets).toEqual(served.offsets);
    } finally {
      expect(await held.release()).toEqual({ status: 0, out: expect.any(String), err: '' });
    }
    // Under the library's name the view shows the image's size; the real tree keeps the original.
    const image = fs.statSync(`${paths.viewMount}/lib/libfscachedemo.so`);
    expect(fs.statSync(lib).mode).toBe(image.mode);
    expect(fs.readFileSync(`${paths.viewMount}/lib/libfscachedemo.so`).equals(fs.readFileSync(lib))).toBe(false);
  });

  kernelTest('rerandomize while a program calls the library in a loop: it keeps its layout to its end; new launches get a new one', async () => {
    const before = launch(['/usr/bin/svdemo']);
    expect(shuffled(before.offsets)).toBe(true);
    const held = await launchHeld(vr.root, ['/usr/bin/callsloop'], { PATH: '/usr/bin:/bin' });
    const end = await whileHeld(held, async () => {
      expect(vr.cli('rerandomize').status).toBe(0);
      const after = await until('a new layout for new launches', () => {
        const l = launch(['/usr/bin/svdemo']);
        return shuffled(l.offsets) && JSON.stringify(l.offsets) !== JSON.stringify(before.offsets) ? l : undefined;
      });
      expect(after.checksum).toBe(checksum);
      // Its pages dropped meanwhile (a new epoch invalidates every name): it faults them in again from its own image.
      await new Promise((res) => setTimeout(res, 1000));
    });
    expect(end.status).toBe(0);
    expect(end.out).toMatch(/calls [1-9]\d* wrong 0\n/);
  });

  kernelTest('the daemon exits when idle; a miss has the supervisor start it again and the next launches get the image', async () => {
    await until('the daemon to exit idle', () => (daemonIdle(paths) ? true : undefined), 30_000);
    expect(daemonPid(paths)).toBeUndefined();
    // warm records a refusal for each of the host's libraries: status --json of a few hundred KB, whole through a pipe.
    expect(vr.cli('warm').status).toBe(0);
    const status = JSON.parse(vr.cli('status', '--json').stdout) as { health: string; problems: string[]; hook: { daemonIdle: boolean } };
    expect(status).toMatchObject({ health: 'healthy', problems: [], hook: { daemonIdle: true } });
    // A new version of the library (its identity changes): a miss, with no daemon listening.
    const before = launch(['/usr/bin/svdemo']);
    const t = new Date(Date.now() + 5000);
    fs.utimesSync(lib, t, t);
    const after = await until('the new version served randomized', () => {
      const r = launch(['/usr/bin/svdemo']);
      return shuffled(r.offsets) && JSON.stringify(r.offsets) !== JSON.stringify(before.offsets) ? r : undefined;
    });
    expect(after.checksum).toBe(checksum);
    expect(daemonPid(paths)).toBeGreaterThan(0);
  });

  libfuse2Test('libfuse2: images made before a path is first looked up are served under its name, setuid included; a new epoch renews the view under a running caller', async () => {
    expect(vr.cli('start').status).toBe(0);
    // warm: the image exists before the view is first asked about the library.
    expect(vr.cli('warm').status).toBe(0);
    const plain = launch(['/usr/bin/svdemo']);
    const suid = launch([...NOBODY, '/usr/bin/svdemo-suid']);
    expect({ status: plain.status, stderr: plain.stderr }).toEqual({ status: 0, stderr: '' });
    expect(shuffled(plain.offsets)).toBe(true);
    expect(suid).toEqual(plain);
    const viewPid = () => (JSON.parse(vr.cli('status', '--json').stdout) as { view: { pid: number | null } }).view.pid;
    const before = viewPid();
    const held = await launchHeld(vr.root, ['/usr/bin/callsloop'], { PATH: '/usr/bin:/bin' });
    const end = await whileHeld(held, async () => {
      expect(vr.cli('rerandomize').status).toBe(0);
      // The view asks its supervisor for a fresh one: the old one drains, serving the caller's pages.
      await until('a renewed view', () => {
        const pid = viewPid();
        return pid && pid !== before ? pid : undefined;
      });
    });
    expect(end.status).toBe(0);
    expect(end.out).toMatch(/calls [1-9]\d* wrong 0\n/);
  });
});
