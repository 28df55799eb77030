/**
 * Power cuts: whatever R/usr points at must resolve to the real tree when nothing of fscache
 * runs. At several moments (after start, during launches that fill the store, during sync,
 * during stop) every fscache process is killed with SIGKILL, everything fscache mounted under
 * R is gone and R/run is a fresh tmpfs — what the next boot sees. Then, before any fscache
 * code runs, `chroot R /usr/bin/sh -c true` and python3 must work; then `start` works again.
 *
 * View mode runs on a whole root (R/usr.real an overlay over this machine's /usr); mirror
 * mode on a small real tree (sh and python3 with its library), which its sync copies whole.
 * fscache runs from the checkout with --root R, and, for the cuts during rerandomize and warm, as
 * the package installed inside the root (chroot R, the hook on). Every call is bounded; cleanup aborts FUSE
 * connections before unmounting, also after a failure.
 */
import { ChildProcess, execFileSync, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { isMountPoint, mountsBelow } from '../core/mounts';
import { CLI_ENTRY, PACKAGE_ROOT } from '../core/package-root';
import { makeSandbox, Sandbox } from '../dev/sandbox';
import { abortFuseBelow, processesOfRoot, RunResult, runBounded } from './helpers/bounded';
import { createWholeRoot, INIT_ENV, WholeRoot, wholeRootAvailable } from './helpers/whole-root';
import { afterEachDispose } from './helpers/cleanup';
import { parseDemo } from './hook/view-root';

const skip = wholeRootAvailable();
const maybe = skip ? describe.skip : describe;
if (skip) console.warn(`power-cut tests skipped: ${skip}`);

const session = process.env.FSCACHE_TEST_SESSION;
const CHROOT = ['/usr/sbin/chroot', '/usr/bin/chroot'].find((p) => fs.existsSync(p)) ?? 'chroot';

/** Runs a command with the init-like environment, bounded (test/helpers/bounded.ts). */
const bounded = (cmd: string, args: string[], root: string, timeoutMs: number): Promise<RunResult> =>
  runBounded(cmd, args, { abortBelow: root, timeoutMs, env: INIT_ENV });

/** fscache from the checkout, on the host, with --root R (as the lead's brief: not yet installed in R). */
const fscache = (root: string, args: string[], timeoutMs = 60000) => bounded(process.execPath, [CLI_ENTRY, '--root', root, ...args], root, timeoutMs);
const spawnFscache = (root: string, args: string[]): ChildProcess =>
  spawn(process.execPath, [CLI_ENTRY, '--root', root, ...args], { env: INIT_ENV, cwd: '/', stdio: 'ignore' });
const inRoot = (root: string, argv: string[], timeoutMs = 30000) => bounded(CHROOT, [root, ...argv], root, timeoutMs);

function killAll(root: string): void {
  for (let round = 0; round < 3; round++) {
    for (const pid of processesOfRoot(root)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    // A process stuck on a FUSE request dies only once its connection is aborted.
    abortFuseBelow(root);
  }
}

interface CutRoot {
  root: string;
  /** kill -9 of everything, every mount of fscache's gone, a fresh tmpfs on R/run. */
  powerCut(): void;
  dispose(): Promise<void>;
}

/** The whole root: its own power cut, after the fscache processes on the host (not chrooted) are killed too. */
function wholeCutRoot(config: string): CutRoot & { wr: WholeRoot } {
  const wr = createWholeRoot({ config, prefix: 'fscache-cut-' });
  return {
    wr,
    root: wr.root,
    powerCut: () => {
      killAll(wr.root);
      wr.powerCut();
    },
    dispose: async () => {
      killAll(wr.root);
      await wr.dispose();
    },
  };
}

/** A small real tree: sh and python3 with the libraries and the standard library they load. */
function smallCutRoot(config: string): CutRoot & { sandbox: Sandbox } {
  const sandbox = makeSandbox({ copy: true, prefix: 'fscache-cut-mirror-' });
  const root = sandbox.root;
  const cut: CutRoot & { sandbox: Sandbox } = {
    sandbox,
    root,
    powerCut: () => {
      killAll(root);
      for (const m of mountsBelow(root)) execFileSync('umount', ['-l', m], { timeout: 10000 });
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'mode=755', 'tmpfs', path.join(root, 'run')], { timeout: 10000 });
    },
    dispose: async () => {
      killAll(root);
      sandbox.cleanup();
    },
  };
  try {
    const real = sandbox.realTree;
    const libdir = path.join(real, 'lib', 'x86_64-linux-gnu');
    fs.mkdirSync(path.join(real, 'bin'));
    fs.mkdirSync(libdir, { recursive: true });
    fs.mkdirSync(path.join(real, 'lib64'));
    for (const bin of ['dash', 'python3.11']) fs.copyFileSync(`/usr/bin/${bin}`, path.join(real, 'bin', bin));
    fs.symlinkSync('dash', path.join(real, 'bin', 'sh'));
    fs.symlinkSync('python3.11', path.join(real, 'bin', 'python3'));
    for (const lib of ['libc.so.6', 'libm.so.6', 'libz.so.1', 'libexpat.so.1', 'ld-linux-x86-64.so.2']) {
      fs.copyFileSync(fs.realpathSync(`/usr/lib/x86_64-linux-gnu/${lib}`), path.join(libdir, lib));
    }
    fs.symlinkSync('../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2', path.join(real, 'lib64', 'ld-linux-x86-64.so.2'));
    execFileSync('cp', ['-a', '/usr/lib/python3.11', path.join(real, 'lib')], { timeout: 60000 });
    fs.writeFileSync(path.join(root, 'etc', 'fscache.conf'), config);
    // As setup leaves it; R/run a tmpfs, as at boot.
    fs.rmSync(path.join(root, 'usr'));
    fs.symlinkSync('usr.real', path.join(root, 'usr'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'mode=755', 'tmpfs', path.join(root, 'run')], { timeout: 10000 });
  } catch (err) {
    sandbox.cleanup();
    throw err;
  }
  return cut;
}

/** What each cut left R/usr pointing at, printed at the end (which states the moments reached). */
const seen: string[] = [];

/** What a boot after the cut runs first: no fscache code, just programs from /usr. */
async function expectBoots(root: string, moment: string): Promise<void> {
  expect({ moment, mounted: isMountPoint(path.join(root, 'usr.view')) }).toEqual({ moment, mounted: false });
  const link = fs.readlinkSync(path.join(root, 'usr'));
  expect(['usr.real', 'usr.view']).toContain(link);
  seen.push(`${moment}: R/usr -> ${link}`);
  const sh = await inRoot(root, ['/usr/bin/sh', '-c', 'true']);
  expect({ moment, code: sh.code, stderr: sh.stderr }).toEqual({ moment, code: 0, stderr: '' });
  const py = await inRoot(root, ['/usr/bin/python3', '-c', 'import json; print(json.dumps([1]))']);
  expect({ moment, code: py.code, stdout: py.stdout, stderr: py.stderr }).toEqual({ moment, code: 0, stdout: '[1]\n', stderr: '' });
}

async function expectOk(what: string, r: Promise<RunResult>): Promise<RunResult> {
  const res = await r;
  expect({ what, code: res.code, timedOut: res.timedOut, stderr: res.code === 0 ? '' : res.stderr }).toEqual({ what, code: 0, timedOut: false, stderr: '' });
  return res;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Polls until `cond` holds (or the deadline passes): the moment to cut. */
async function until(cond: () => boolean, timeoutMs = 20000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond() && Date.now() < deadline) await sleep(5);
}
const rsyncRunning = (root: string) => processesOfRoot(root).some((pid) => {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0].endsWith('rsync');
  } catch {
    return false;
  }
});
const linkIs = (root: string, target: string) => {
  try {
    return fs.readlinkSync(path.join(root, 'usr')) === target;
  } catch {
    return false;
  }
};
/** Said of a process started before a cut: whether the cut came while it ran. */
const when = (p: ChildProcess) => (p.exitCode === null && p.signalCode === null ? 'while it ran' : `after it ended (${p.exitCode ?? p.signalCode})`);

maybe('power cut', () => {
  let cut: CutRoot | undefined;
  afterAll(() => console.log(`power cuts:\n  ${seen.join('\n  ')}`));
  afterEachDispose(() => cut, () => (cut = undefined));

  test('view mode: after start, during launches (fills), during sync, during stop, R/usr boots the real tree; start works again', async () => {
    const c = wholeCutRoot(`hook = off\naccess_flush_ms = 200\n${session ? `fuse_session = ${session}\n` : ''}`);
    cut = c;
    const { root } = c;
    const launch = (argv: string[]) => inRoot(root, argv, 30000);

    // setup on a root that is set up makes the view's mount point: the real tree by its links.
    await expectOk('setup', fscache(root, ['setup', '--yes']));
    expect(fs.readlinkSync(path.join(root, 'usr.view', 'bin'))).toBe('../usr.real/bin');
    expect(fs.lstatSync(path.join(root, 'usr.view')).uid).toBe(0);

    // 1. After start, a program launched through the view.
    await expectOk('start', fscache(root, ['start']));
    expect(fs.readlinkSync(path.join(root, 'usr'))).toBe('usr.view');
    expect(isMountPoint(path.join(root, 'usr.view'))).toBe(true);
    await expectOk('git through the view', launch(['/usr/bin/git', '--version']));
    c.powerCut();
    expect(fs.readlinkSync(path.join(root, 'usr'))).toBe('usr.view'); // the case that left no /usr before
    await expectBoots(root, 'after start');

    // 2. During launches that fill the store.
    await expectOk('start after the cut', fscache(root, ['start']));
    const launches = [
      ['/usr/bin/python3', '-c', 'import json, sqlite3, decimal, email.parser'],
      ['/usr/bin/perl', '-MPOSIX', '-e', '1'],
      ['/usr/bin/gcc', '--version'],
      ['/usr/bin/git', '--version'],
      ['/usr/bin/curl', '--version'],
    ].map((argv) => launch(argv));
    await sleep(300);
    c.powerCut();
    const ended = (await Promise.all(launches)).filter((r) => r.code === 0).length;
    await expectBoots(root, `during launches (${5 - ended} of 5 cut while they ran)`);

    // 3. During sync.
    await expectOk('start', fscache(root, ['start']));
    for (const argv of [['/usr/bin/python3', '-c', 'import json'], ['/usr/bin/perl', '-e', '1']]) await expectOk(argv[0], launch(argv));
    await sleep(500); // the fills land in the index
    const sync = spawnFscache(root, ['sync']);
    await until(() => rsyncRunning(root));
    const syncAt = when(sync);
    c.powerCut();
    await expectBoots(root, `during sync (rsync running), ${syncAt}`);

    // 4. During stop.
    await expectOk('start', fscache(root, ['start']));
    await expectOk('launch', launch(['/usr/bin/python3', '-c', 'import json']));
    const stop = spawnFscache(root, ['stop']);
    await until(() => linkIs(root, 'usr.real')); // switched back, the view still detaching
    const stopAt = when(stop);
    c.powerCut();
    await expectBoots(root, `during stop (link switched), ${stopAt}`);

    // And again: start, launch, stop, all from the state the cut left.
    await expectOk('start', fscache(root, ['start']));
    await expectOk('launch', launch(['/usr/bin/python3', '-c', 'import json']));
    await expectOk('stop', fscache(root, ['stop']));
    expect(fs.readlinkSync(path.join(root, 'usr'))).toBe('usr.real');
  }, 600000);

  test('installed in the root, hook on: during rerandomize and during warm, R/usr boots the real tree and the leftover LD_AUDIT says nothing', async () => {
    // serve_images = off: LD_AUDIT is set (with the view serving images it is not: nothing to leave behind).
    const c = wholeCutRoot(`access_flush_ms = 200\nserve_images = off\n${session ? `fuse_session = ${session}\n` : ''}`);
    cut = c;
    const { root, wr } = c;
    /** The LD_AUDIT a login gets from R/etc/environment after the cut (start wrote it; nothing removed it). */
    const leftoverAudit = () => /^LD_AUDIT=["']?([^"'\n]*)/m.exec(fs.readFileSync(path.join(root, 'etc', 'environment'), 'utf8'))?.[1];
    const expectQuietWithAudit = async (moment: string) => {
      const audit = leftoverAudit();
      expect({ moment, audit: !!audit }).toEqual({ moment, audit: true });
      // Set inside the root (env(1)): given to chroot(8), the host's loader would look for the auditor on the host.
      const r = await wr.run(['/usr/bin/env', `LD_AUDIT=${audit}`, '/usr/bin/python3', '-c', 'import json'], { timeoutMs: 30000 });
      expect({ moment, code: r.code, stderr: r.stderr }).toEqual({ moment, code: 0, stderr: '' });
    };

    // 5. During rerandomize: run by the installed package inside the root, as an administrator would.
    await expectOk('start (installed)', wr.fscache(['start'], { timeoutMs: 60000 }));
    await expectOk('git through the view', wr.run(['/usr/bin/git', '--version'], { timeoutMs: 30000 }));
    const rerandomize = wr.spawnIn(['/usr/bin/fscache', 'rerandomize']);
    await sleep(150);
    const rerandomizeAt = when(rerandomize);
    c.powerCut();
    await expectBoots(root, `during rerandomize (installed, hook on), ${rerandomizeAt}`);
    await expectQuietWithAudit('after a cut during rerandomize');

    // 6. During warm (the daemon and warm randomizing libraries).
    await expectOk('start again (installed)', wr.fscache(['start'], { timeoutMs: 60000 }));
    const warm = wr.spawnIn(['/usr/bin/fscache', 'warm']);
    await sleep(1500);
    const warmAt = when(warm);
    c.powerCut();
    await expectBoots(root, `during warm (installed, hook on), ${warmAt}`);
    await expectQuietWithAudit('after a cut during warm');
    await expectOk('start after the cuts (installed)', wr.fscache(['start'], { timeoutMs: 60000 }));
    await expectOk('stop (installed)', wr.fscache(['stop'], { timeoutMs: 60000 }));
    expect(fs.readlinkSync(path.join(root, 'usr'))).toBe('usr.real');
  }, 600000);

  // libfuse2 keeps what a path was answered as until the view is renewed: the launch-by-launch
  // expectation below is the kernel session's (as in test/hook/served.test.ts).
  (session === 'libfuse2' ? test.skip : test)('installed in the root, images served under the libraries\' names: a setuid program run as nobody maps its library randomized; a cut while it is served boots the real tree, and start serves the image again', async () => {
    const c = wholeCutRoot('library_dirs = usr/lib\naccess_flush_ms = 200\n');
    cut = c;
    const { root, wr } = c;
    const demo = path.join(PACKAGE_ROOT, 'loader-hook', 'demo');
    const libDir = path.join(wr.realTree, 'lib');
    const lib = path.join(libDir, 'libfscachedemo.so');
    execFileSync('gcc', ['-O2', '-fPIC', '-ffunction-sections', '-fno-inline', '-shared', '-Wl,--emit-relocs', '-Wl,-soname,libfscachedemo.so', '-o', lib, path.join(demo, 'libfscachedemo.c')]);
    fs.chmodSync(lib, 0o644);
    const program = path.join(wr.realTree, 'bin', 'svdemo-suid');
    execFileSync('gcc', ['-O2', '-o', program, path.join(demo, 'hookdemo.c'), `-L${libDir}`, '-lfscachedemo']);
    fs.chmodSync(program, 0o4755);
    const original: Record<string, number> = {};
    for (const m of execFileSync('nm', [lib], { encoding: 'utf8' }).matchAll(/^([0-9a-f]+) T demo_(\w+)$/gm)) original[m[2]] = parseInt(m[1], 16);
    const asNobody = async () => {
      const r = await wr.run(['/usr/bin/svdemo-suid'], { asUser: 65534, timeoutMs: 30000 });
      return { code: r.code, stderr: r.stderr, ...parseDemo(r.stdout) };
    };
    const shuffled = async () => {
      const deadline = Date.now() + 30000;
      for (;;) {
        const r = await asNobody();
        if (Object.keys(original).some((fn) => r.offsets[fn] !== original[fn]) || Date.now() > deadline) return r;
        await sleep(200);
      }
    };

    await expectOk('start (installed)', wr.fscache(['start'], { timeoutMs: 60000 }));
    const first = await asNobody(); // a miss: the original, and the view asks for the image
    expect({ code: first.code, offsets: first.offsets }).toEqual({ code: 0, offsets: original });
    const served = await shuffled();
    expect({ code: served.code, stderr: served.stderr, checksum: served.checksum }).toEqual({ code: 0, stderr: '', checksum: first.checksum });
    expect(served.offsets).not.toEqual(original);

    c.powerCut();
    await expectBoots(root, 'while an image is served (installed)');
    const booted = await asNobody();
    expect({ code: booted.code, offsets: booted.offsets, checksum: booted.checksum }).toEqual({ code: 0, offsets: original, checksum: first.checksum });

    await expectOk('start after the cut (installed)', wr.fscache(['start'], { timeoutMs: 60000 }));
    const again = await shuffled();
    expect({ code: again.code, checksum: again.checksum }).toEqual({ code: 0, checksum: first.checksum });
    expect(again.offsets).not.toEqual(original);
    await expectOk('stop (installed)', wr.fscache(['stop'], { timeoutMs: 60000 }));
    expect(fs.readlinkSync(path.join(root, 'usr'))).toBe('usr.real');
  }, 600000);

  test('mirror mode: the mirror is bound read-only; after start, during sync, during stop, R/usr boots the real tree', async () => {
    const c = smallCutRoot('mode = mirror\nhook = off\n');
    cut = c;
    const { root } = c;
    const launch = (argv: string[]) => inRoot(root, argv, 30000);

    await expectOk('setup', fscache(root, ['setup', '--yes']));
    // 1. During the first sync (no mirror yet: R/usr stays on the real tree).
    const first = spawnFscache(root, ['sync']);
    await until(() => rsyncRunning(root));
    await sleep(100);
    const firstAt = when(first);
    c.powerCut();
    await expectBoots(root, `during the first sync (mirror), ${firstAt}`);

    // 2. After start: the mirror bound read-only at R/usr.view, R/usr there.
    await expectOk('sync', fscache(root, ['sync'], 120000));
    await expectOk('start', fscache(root, ['start']));
    expect(fs.readlinkSync(path.join(root, 'usr'))).toBe('usr.view');
    expect(isMountPoint(path.join(root, 'usr.view'))).toBe(true);
    await expectOk('python3 from the mirror', launch(['/usr/bin/python3', '-c', 'import json']));
    // Nothing is written through /usr into the flash copy.
    const write = await launch(['/usr/bin/sh', '-c', 'echo x > /usr/bin/written-through']);
    expect(write.code).not.toBe(0);
    expect(write.stderr).toMatch(/Read-only file system/);
    c.powerCut();
    expect(fs.readlinkSync(path.join(root, 'usr'))).toBe('usr.view');
    await expectBoots(root, 'after start (mirror)');

    // 3. During a sync while the mirror is served (a changed real tree).
    await expectOk('start after the cut', fscache(root, ['start']));
    execFileSync('cp', ['-a', path.join(c.sandbox.realTree, 'lib', 'python3.11', 'email'), path.join(c.sandbox.realTree, 'lib', 'email-copy')]);
    const sync = spawnFscache(root, ['sync']);
    await until(() => linkIs(root, 'usr.real')); // the sync moved R/usr to the real tree while rsync rewrites the mirror
    const syncAt = when(sync);
    c.powerCut();
    await expectBoots(root, `during sync (mirror, served; link switched), ${syncAt}`);

    // 4. During stop.
    await expectOk('sync', fscache(root, ['sync'], 120000));
    await expectOk('start', fscache(root, ['start']));
    const stop = spawnFscache(root, ['stop']);
    await until(() => linkIs(root, 'usr.real'));
    const stopAt = when(stop);
    c.powerCut();
    await expectBoots(root, `during stop (mirror; link switched), ${stopAt}`);

    await expectOk('start', fscache(root, ['start']));
    await expectOk('launch', launch(['/usr/bin/python3', '-c', 'import json']));
    await expectOk('stop', fscache(root, ['stop']));
    expect(fs.readlinkSync(path.join(root, 'usr'))).toBe('usr.real');
    expect(isMountPoint(path.join(root, 'usr.view'))).toBe(false);
  }, 600000);
});
