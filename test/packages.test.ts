/**
 * Package managers while fscache runs: the root's own dpkg installs, upgrades and removes a
 * .deb in view and mirror mode; the hooks that start installs pause fscache for each dpkg run,
 * so the files land in the real tree, run at once through /usr, and no sync undoes them.
 *
 * The root: R/usr.real an overlay over this machine's /usr (its upper layer in a temp dir,
 * so the host's /usr is never written; a few large trees a dpkg run does not need are
 * whited out so that a mirror sync stays short), fscache installed at R/usr.real/lib/fscache
 * as a package would be (the hook runs it from there, inside the chroot), an empty dpkg
 * database. fscache is run inside the root (chroot, root /) as its package installs it.
 */
import { ChildProcess, execFileSync, spawnSync } from 'child_process';
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { identityOf } from '../core/identity';
import { StoreIndex } from '../fs/store/index-db';
import { readLinkState } from '../fs/switch/link';
import { silentLogger } from '../core/log';
import { pauseFile, readPause } from '../fs/switch/pause';
import { derivePaths, Paths } from '../core/paths';
import { parseConfig } from '../core/config';
import { dpkgHookFile, dpkgHookText, hookCommand, installPackageHooks, portageBashrc, portageBlock, removePackageHooks } from '../fs/switch/pkg-hooks';
import { PACKAGE_ROOT } from '../core/package-root';
import { createWholeRoot, WholeRoot } from './helpers/whole-root';
import { fuseAvailable, waitFor } from './helpers/view-sandbox';
import { afterEachDispose } from './helpers/cleanup';

const skip = fuseAvailable() ?? (fs.existsSync('/usr/bin/dpkg-deb') && fs.existsSync('/usr/bin/gcc') ? undefined : 'dpkg-deb or gcc missing');
const maybe = skip ? describe.skip : describe;
if (skip) console.warn(`package tests skipped: ${skip}`);

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
/** Large trees of /usr that neither dpkg nor the test program needs (whited out in the overlay). */
const PRUNED = ['lib/google-cloud-sdk', 'lib/jvm', 'lib/llvm-14', 'lib/postgresql', 'lib/gcc', 'local', 'include', 'share/doc', 'share/locale', 'share/man', 'share/package-lists'];

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** A whole root for package tests (test/helpers/whole-root.ts), with what these tests add to it. */
class PkgRoot {
  readonly paths: Paths;
  readonly children = new Set<ChildProcess>();

  private constructor(readonly wr: WholeRoot, configText: string) {
    this.paths = derivePaths(wr.root, parseConfig(configText, 'test config'));
  }

  get root(): string {
    return this.wr.root;
  }

  /** The installed package, inside the real tree. */
  get pkgDir(): string {
    return this.wr.packageDir;
  }

  /** A root as `fscache setup --yes` leaves it (run inside the root: R/usr.view and its links). */
  static async create(configText: string): Promise<PkgRoot> {
    const session = process.env.FSCACHE_TEST_SESSION ? `fuse_session = ${process.env.FSCACHE_TEST_SESSION}\n` : '';
    const r = new PkgRoot(createWholeRoot({ config: configText + session, prune: PRUNED, prefix: 'fscache-pkg-' }), configText + session);
    const setup = await r.cli(['setup', '--yes']);
    if (setup.code !== 0) {
      await r.dispose();
      throw new Error(`setup failed: ${setup.stdout}${setup.stderr}`);
    }
    return r;
  }

  /** `fscache ...` inside the root, as an administrator or an init script runs it (root /). */
  cli(args: string[], timeout = 120000): Promise<Run> {
    return this.chroot(['/usr/bin/fscache', ...args], timeout);
  }

  /** Runs argv in `chroot R`, bounded (whole-root's run). */
  async chroot(argv: string[], timeout = 120000): Promise<Run> {
    const r = await this.wr.run(argv, { timeoutMs: timeout });
    return { code: r.code, stdout: r.stdout, stderr: r.stderr + (r.timedOut ? `\n(killed after ${timeout} ms)` : '') };
  }

  /** A program running inside the root; its output so far in `output()`. */
  spawn(argv: string[]): { child: ChildProcess; output: () => string } {
    const child = this.wr.spawnIn(argv);
    this.children.add(child);
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (out += d));
    return { child, output: () => out };
  }

  async dispose(): Promise<void> {
    for (const c of this.children) c.kill('SIGKILL');
    await this.wr.dispose();
  }
}

type Debs = Record<1 | 2 | 'broken', string>;

/** A .deb with a library in /usr/lib/fscache-test whose function returns `value`, and a program printing it. */
function buildDebs(dir: string): Debs {
  fs.writeFileSync(path.join(dir, 'lib.c'), 'int fscache_test_value(void) { return VALUE; }\n');
  fs.writeFileSync(path.join(dir, 'prog.c'), `#include <stdio.h>
#include <string.h>
#include <unistd.h>
int fscache_test_value(void);
int main(int argc, char **argv) {
  int loop = argc > 1 && strcmp(argv[1], "loop") == 0;
  for (int i = 0; i < (loop ? 1200 : 1); i++) {
    printf("%d\\n", fscache_test_value());
    fflush(stdout);
    if (loop) usleep(50000);
  }
  return 0;
}
`);
  const debs = {} as Debs;
  for (const v of [1, 2] as const) {
    const tree = path.join(dir, `pkg${v}`);
    const lib = path.join(tree, 'usr/lib/fscache-test');
    for (const d of ['DEBIAN', 'usr/bin', 'usr/lib/fscache-test']) fs.mkdirSync(path.join(tree, d), { recursive: true, mode: 0o755 });
    execFileSync('gcc', ['-O2', '-fPIC', '-shared', `-DVALUE=${v}`, '-Wl,-soname,libfscachetest.so.1', '-o', path.join(lib, 'libfscachetest.so.1'), path.join(dir, 'lib.c')]);
    execFileSync('gcc', ['-O2', '-o', path.join(tree, 'usr/bin/fscache-test'), path.join(dir, 'prog.c'), `-L${lib}`, '-l:libfscachetest.so.1', '-Wl,-rpath,/usr/lib/fscache-test']);
    fs.writeFileSync(path.join(tree, 'DEBIAN/control'), `Package: fscache-test\nVersion: ${v}\nArchitecture: amd64\nMaintainer: fscache tests <root@localhost>\nDescription: a library and a program for the package tests\n`);
    debs[v] = path.join(dir, `fscache-test_${v}.deb`);
    execFileSync('dpkg-deb', ['--build', '--root-owner-group', tree, debs[v]], { stdio: 'ignore' });
  }
  // A package whose preinst fails: dpkg reports the error and still runs its post-invoke hook.
  const broken = path.join(dir, 'broken');
  fs.mkdirSync(path.join(broken, 'DEBIAN'), { recursive: true, mode: 0o755 });
  fs.writeFileSync(path.join(broken, 'DEBIAN/control'), 'Package: fscache-broken\nVersion: 1\nArchitecture: all\nMaintainer: fscache tests <root@localhost>\nDescription: a preinst that fails\n');
  fs.writeFileSync(path.join(broken, 'DEBIAN/preinst'), '#!/bin/sh\necho preinst fails >&2\nexit 1\n', { mode: 0o755 });
  debs.broken = path.join(dir, 'fscache-broken_1.deb');
  execFileSync('dpkg-deb', ['--build', '--root-owner-group', broken, debs.broken], { stdio: 'ignore' });
  return debs;
}

maybe('package managers while fscache runs', () => {
  let root: PkgRoot | undefined;
  afterEachDispose(() => root, () => (root = undefined));

  /** Where buildDebs left version 1's library (outside R/usr), set by debsInRoot. */
  let libV1 = '';
  /** Copies the debs into R/tmp; returns their paths as seen inside the root. */
  function debsInRoot(r: PkgRoot): Debs {
    const dir = fs.mkdtempSync(path.join(r.root, '.debs-'));
    const built = buildDebs(dir);
    libV1 = path.join(dir, 'pkg1/usr/lib/fscache-test/libfscachetest.so.1');
    const inRoot = {} as Debs;
    for (const v of [1, 2, 'broken'] as const) {
      fs.copyFileSync(built[v], path.join(r.root, 'tmp', path.basename(built[v])));
      inRoot[v] = `/tmp/${path.basename(built[v])}`;
    }
    return inRoot;
  }

  /** How long each dpkg run took (hooks included), logged at the end of each test. */
  const timings: string[] = [];
  afterEach(() => {
    if (timings.length) console.log(`dpkg runs: ${timings.splice(0).join(', ')}`);
  });
  const dpkg = async (r: PkgRoot, ...args: string[]) => {
    const t0 = Date.now();
    const run = await r.chroot(['/usr/bin/dpkg', ...args]);
    timings.push(`${args.join(' ').replace(/\/tmp\//, '')} ${Date.now() - t0} ms`);
    return run;
  };
  const realFile = (r: PkgRoot, rel: string) => path.join(r.paths.realTree, rel);
  /** Values the long-running program printed after `from` characters of output. */
  const valuesAfter = (output: string, from: number) => output.slice(from).split('\n').filter((l) => /^\d+$/.test(l));

  test('view mode: dpkg installs, upgrades (a running program keeps its library) and removes; sync keeps it', async () => {
    root = await PkgRoot.create('hook = off\naccess_flush_ms = 200\n');
    const r = root;
    const debs = debsInRoot(r);
    const start = await r.cli(['start']);
    expect(start).toMatchObject({ code: 0 });
    expect(readLinkState(r.paths).state).toBe('view');
    expect(fs.readFileSync(dpkgHookFile(r.paths), 'utf8')).toContain('pre-invoke=/usr.real/lib/fscache/bin/fscache --root / pause --holder dpkg');

    let run = await dpkg(r, '-i', debs[1]);
    expect(run).toMatchObject({ code: 0, stdout: expect.stringMatching(/paused \(dpkg\)[\s\S]*resumed/) });
    // The supervisor saw the pause and its end: R/usr back on the view after resume.
    expect(readLinkState(r.paths).state).toBe('view');
    expect(readPause(r.paths)).toBeUndefined();
    expect(fs.existsSync(realFile(r, 'lib/fscache-test/libfscachetest.so.1'))).toBe(true);
    expect(await r.chroot(['/usr/bin/fscache-test'])).toMatchObject({ code: 0, stdout: '1\n' });

    // A failing package: dpkg fails as it would without fscache, and /usr still goes back to the view.
    run = await dpkg(r, '-i', debs.broken);
    expect(run).toMatchObject({ code: 1, stdout: expect.stringMatching(/resumed/) });
    expect(readLinkState(r.paths).state).toBe('view');
    expect((await dpkg(r, '--purge', 'fscache-broken')).code).toBe(0);

    const v1 = r.spawn(['/usr/bin/fscache-test', 'loop']);
    expect(await waitFor(() => valuesAfter(v1.output(), 0).length >= 3, 10000)).toBeGreaterThanOrEqual(0);

    run = await dpkg(r, '-i', debs[2]);
    expect(run).toMatchObject({ code: 0 });
    expect(readLinkState(r.paths).state).toBe('view');
    // v2's library has v1's size and mtime (both built in the same second): with libfuse2 (one
    // kernel node per path) this launch read v1's cached pages until the view was renewed at resume.
    expect(await r.chroot(['/usr/bin/fscache-test'])).toMatchObject({ code: 0, stdout: '2\n' });
    // Let the watcher see the replaced library and the kernel drop what it cached of it.
    const mark = v1.output().length;
    await new Promise((res) => setTimeout(res, 3000));
    execFileSync('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches']);
    await new Promise((res) => setTimeout(res, 1000));
    // Asserted at the end, so that everything else is checked too: see there.
    const printedAfterUpgrade = [...new Set(valuesAfter(v1.output(), mark))];
    // A signal here (SIGBUS) is the view failing a page of the old library (2026-12-05: the old
    // node's descriptor was closed on dpkg's link count change, and a later fault found the new file).
    const v1Signal = v1.child.signalCode;

    expect(await r.cli(['sync'])).toMatchObject({ code: 0 });
    expect(await r.chroot(['/usr/bin/fscache-test'])).toMatchObject({ code: 0, stdout: '2\n' });
    expect(await r.chroot(['/usr/bin/dpkg-query', '-W', '-f', '${Version}', 'fscache-test'])).toMatchObject({ code: 0, stdout: '2' });

    // Outside a package transaction (an administrator's copy and rename into the real tree), a
    // library of the same size and mtime again: a new launch gets it, a running program keeps its own.
    const v2 = r.spawn(['/usr/bin/fscache-test', 'loop']);
    expect(await waitFor(() => valuesAfter(v2.output(), 0).length >= 3, 10000)).toBeGreaterThanOrEqual(0);
    const libPath = realFile(r, 'lib/fscache-test/libfscachetest.so.1');
    const { mtime } = fs.statSync(libPath);
    fs.copyFileSync(libV1, `${libPath}.new`);
    fs.utimesSync(`${libPath}.new`, mtime, mtime);
    fs.renameSync(`${libPath}.new`, libPath);
    await new Promise((res) => setTimeout(res, 2000));
    expect(await waitFor(() => readLinkState(r.paths).state === 'view', 15000, 50)).toBeGreaterThanOrEqual(0);
    expect(await r.chroot(['/usr/bin/fscache-test'])).toMatchObject({ code: 0, stdout: '1\n' });
    const markV2 = v2.output().length;
    await new Promise((res) => setTimeout(res, 1000));
    execFileSync('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches']);
    await new Promise((res) => setTimeout(res, 1000));
    expect([...new Set(valuesAfter(v2.output(), markV2))]).toEqual(['2']);
    v2.child.kill('SIGKILL');

    run = await dpkg(r, '-r', 'fscache-test');
    expect(run).toMatchObject({ code: 0 });
    expect(fs.existsSync(realFile(r, 'bin/fscache-test'))).toBe(false);
    expect((await r.chroot(['/usr/bin/fscache-test'])).code).not.toBe(0);
    expect(await r.cli(['sync'])).toMatchObject({ code: 0 });
    expect(fs.existsSync(realFile(r, 'lib/fscache-test/libfscachetest.so.1'))).toBe(false);

    expect(await r.cli(['stop'], 30000)).toMatchObject({ code: 0 });
    expect(fs.existsSync(dpkgHookFile(r.paths))).toBe(false);
    // Stopped: the hook is gone, dpkg works on the real tree as without fscache.
    expect(await dpkg(r, '-i', debs[1])).toMatchObject({ code: 0 });
    expect(await r.chroot(['/usr/bin/fscache-test'])).toMatchObject({ code: 0, stdout: '1\n' });

    // The view reads an old node from the object it was opened as: the program that mapped v1
    // through the view keeps v1's code (before that fix it switched to v2's: printed 2).
    expect({ printedAfterUpgrade, v1Signal }).toEqual({ printedAfterUpgrade: ['1'], v1Signal: null });
  }, 300000);

  // Mirror mode has no FUSE session: its run under the default session covers it.
  const mirrorTest = process.env.FSCACHE_TEST_SESSION ? test.skip : test;
  mirrorTest('mirror mode: dpkg writes reach the real tree, the mirror follows on resume, sync undoes nothing', async () => {
    root = await PkgRoot.create('mode = mirror\nhook = off\n');
    const r = root;
    const debs = debsInRoot(r);
    const mirrorFile = (rel: string) => path.join(r.paths.mirror, rel);
    const t0 = Date.now();
    expect(await r.cli(['sync'], 600000)).toMatchObject({ code: 0 });
    timings.push(`(first mirror sync ${Date.now() - t0} ms)`);
    expect(await r.cli(['start'])).toMatchObject({ code: 0 });
    expect(readLinkState(r.paths).state).toBe('mirror');
    expect(fs.existsSync(dpkgHookFile(r.paths))).toBe(true);

    let run = await dpkg(r, '-i', debs[1]);
    expect(run).toMatchObject({ code: 0, stdout: expect.stringMatching(/resumed: .* -> mirror/) });
    expect(readLinkState(r.paths).state).toBe('mirror');
    expect(fs.existsSync(realFile(r, 'bin/fscache-test'))).toBe(true);
    expect(fs.existsSync(mirrorFile('bin/fscache-test'))).toBe(true);
    expect(await r.chroot(['/usr/bin/fscache-test'])).toMatchObject({ code: 0, stdout: '1\n' });
    expect(await r.cli(['sync'])).toMatchObject({ code: 0 });
    expect(fs.existsSync(realFile(r, 'bin/fscache-test'))).toBe(true);
    expect(await r.chroot(['/usr/bin/fscache-test'])).toMatchObject({ code: 0, stdout: '1\n' });

    const v1 = r.spawn(['/usr/bin/fscache-test', 'loop']);
    expect(await waitFor(() => valuesAfter(v1.output(), 0).length >= 3, 10000)).toBeGreaterThanOrEqual(0);
    run = await dpkg(r, '-i', debs[2]);
    expect(run).toMatchObject({ code: 0 });
    const mark = v1.output().length;
    expect(await r.chroot(['/usr/bin/fscache-test'])).toMatchObject({ code: 0, stdout: '2\n' });
    expect(await r.cli(['sync'])).toMatchObject({ code: 0 });
    expect(await r.chroot(['/usr/bin/fscache-test'])).toMatchObject({ code: 0, stdout: '2\n' });
    await new Promise((res) => setTimeout(res, 500));
    expect([...new Set(valuesAfter(v1.output(), mark))]).toEqual(['1']);

    run = await dpkg(r, '-r', 'fscache-test');
    expect(run).toMatchObject({ code: 0 });
    expect(fs.existsSync(realFile(r, 'bin/fscache-test'))).toBe(false);
    expect(fs.existsSync(mirrorFile('bin/fscache-test'))).toBe(false);
    expect((await r.chroot(['/usr/bin/fscache-test'])).code).not.toBe(0);

    // A transaction that pauses while a sync runs (the sync has R/usr on the real tree): the
    // sync's end leaves it there, the transaction's resume brings it back.
    const syncing = r.cli(['sync']);
    expect(await waitFor(() => readLinkState(r.paths).state === 'real', 20000, 5)).toBeGreaterThanOrEqual(0);
    expect(await r.cli(['pause', '--holder', 'dpkg'])).toMatchObject({ code: 0 });
    expect(await syncing).toMatchObject({ code: 0 });
    expect(readLinkState(r.paths).state).toBe('real');
    expect(await r.cli(['resume', '--holder', 'dpkg'])).toMatchObject({ code: 0, stdout: expect.stringMatching(/resumed: .* -> mirror/) });
    expect(readLinkState(r.paths).state).toBe('mirror');

    // A resume whose sync fails leaves R/usr on the real tree (fail open) and the pause in place.
    expect(await r.cli(['pause'])).toMatchObject({ code: 0 });
    expect(readLinkState(r.paths).state).toBe('real');
    fs.renameSync(r.paths.mirror, `${r.paths.mirror}.away`);
    fs.writeFileSync(r.paths.mirror, 'not a directory');
    const failed = await r.cli(['resume']);
    expect(failed.code).toBe(4);
    expect(failed.stderr).toMatch(/could not be brought up to date.*stays on the real tree/);
    expect(readLinkState(r.paths).state).toBe('real');
    expect(readPause(r.paths)?.resumeFailure).toBeDefined();
    fs.rmSync(r.paths.mirror);
    fs.renameSync(`${r.paths.mirror}.away`, r.paths.mirror);
    expect(await r.cli(['resume'])).toMatchObject({ code: 0, stdout: expect.stringMatching(/resumed/) });
    expect(readLinkState(r.paths).state).toBe('mirror');

    // stop during a transaction: the hooks go; the transaction's resume leaves fscache stopped.
    expect(await r.cli(['pause', '--holder', 'dpkg'])).toMatchObject({ code: 0 });
    expect(await r.cli(['stop'])).toMatchObject({ code: 0 });
    expect(fs.existsSync(dpkgHookFile(r.paths))).toBe(false);
    expect(await r.cli(['resume', '--holder', 'dpkg'])).toMatchObject({ code: 0, stdout: expect.stringMatching(/not running/) });
    expect(readLinkState(r.paths).state).toBe('real');
    expect(fs.existsSync(pauseFile(r.paths))).toBe(false);
  }, 900000);
});

describe('pause, resume and the hook files (no mounts)', () => {
  let dir: string;
  let paths: Paths;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-pkghooks-'));
    paths = derivePaths(dir, parseConfig('', 'test'));
    fs.mkdirSync(paths.runDir, { recursive: true });
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const cli = (args: string[]) => {
    const r = spawnSync(process.execPath, [path.join(PACKAGE_ROOT, 'dist/cli/main.js'), '--root', dir, ...args], { encoding: 'utf8', timeout: 30000 });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr };
  };

  test('pause and resume: nested holders, idempotent, nothing to do when fscache is not running', () => {
    fs.symlinkSync('usr.real', paths.usrLink);
    fs.mkdirSync(paths.realTree);
    expect(cli(['pause', '--holder', 'dpkg'])).toMatchObject({ code: 0, stdout: 'fscache is not running: nothing to pause\n' });
    expect(fs.existsSync(pauseFile(paths))).toBe(false);
    expect(cli(['resume', '--holder', 'dpkg'])).toMatchObject({ code: 0, stdout: 'not paused\n' });

    // "Running": the link on the view's mount point (here with nothing mounted on it).
    fs.rmSync(paths.usrLink);
    fs.symlinkSync(path.relative(dir, paths.viewMount), paths.usrLink);
    expect(readLinkState(paths).state).toBe('view');
    expect(cli(['pause', '--holder', 'portage:a/new-2'])).toMatchObject({ code: 0 });
    expect(readLinkState(paths).state).toBe('real');
    expect(cli(['pause', '--holder', 'portage:a/old-1'])).toMatchObject({ code: 0 });
    expect(cli(['pause', '--holder', 'portage:a/old-1'])).toMatchObject({ code: 0 }); // idempotent
    expect(Object.keys(readPause(paths)!.holders).sort()).toEqual(['portage:a/new-2', 'portage:a/old-1']);
    expect(readPause(paths)!.resumeTo).toBe('view'); // the config says view mode
    expect(cli(['resume', '--holder', 'portage:a/old-1'])).toMatchObject({ code: 0, stdout: expect.stringMatching(/still paused by portage:a\/new-2/) });
    expect(readLinkState(paths).state).toBe('real');
    const st = fs.lstatSync(pauseFile(paths));
    expect(st.isFile() && st.uid === 0 && (st.mode & 0o777) === 0o644).toBe(true);
    expect(cli(['resume', '--holder', 'portage:a/new-2'])).toMatchObject({ code: 0, stdout: expect.stringMatching(/fscache is not running/) });
    expect(fs.existsSync(pauseFile(paths))).toBe(false);
  });

  test('a pause file is honoured only if it is a root-owned regular file', () => {
    const file = pauseFile(paths);
    fs.writeFileSync(file, JSON.stringify({ holders: { dpkg: { pid: 1, since: 'now' } }, resumeTo: 'mirror' }));
    expect(readPause(paths)).toMatchObject({ resumeTo: 'mirror', holders: { dpkg: { pid: 1 } } });
    fs.chownSync(file, 1000, 1000);
    expect(readPause(paths)).toBeUndefined();
    fs.rmSync(file);
    fs.writeFileSync(path.join(dir, 'elsewhere'), '{}');
    fs.symlinkSync(path.join(dir, 'elsewhere'), file);
    expect(readPause(paths)).toBeUndefined();
  });

  test('hook command: the package under R/usr, the view or the mirror is named in the real tree; outside R there is none', () => {
    const conf = path.join(dir, 'etc', 'fscache.conf');
    for (const pkg of ['usr.real/lib/fscache', 'opt/my fscache']) {
      fs.mkdirSync(path.join(dir, pkg, 'bin'), { recursive: true });
      fs.writeFileSync(path.join(dir, pkg, 'bin', 'fscache'), '');
    }
    const installed = { command: '/usr.real/lib/fscache/bin/fscache --root /' };
    expect(hookCommand(paths, path.join(dir, 'usr/lib/fscache'), conf)).toEqual(installed);
    expect(hookCommand(paths, path.join(paths.viewMount, 'lib/fscache'), conf)).toEqual(installed);
    expect(hookCommand(paths, path.join(paths.mirror, 'lib/fscache'), conf)).toEqual(installed);
    expect(hookCommand(paths, path.join(dir, 'opt/my fscache'), path.join(dir, 'etc/other.conf'))).toEqual({ command: "'/opt/my fscache/bin/fscache' --root / --config /etc/other.conf" });
    expect(hookCommand(paths, '/somewhere/else', conf)).toEqual({ problem: expect.stringMatching(/not inside the root/) });
    expect(hookCommand(paths, path.join(dir, 'usr/lib/fscache'), '/etc/fscache.conf')).toEqual({ problem: expect.stringMatching(/config .* not inside the root/) });
    expect(hookCommand(paths, path.join(dir, 'usr/lib/other'), conf)).toEqual({ problem: expect.stringMatching(/usr.real\/lib\/other\/bin\/fscache is missing/) });
  });

  test('dpkg hook lines never make dpkg fail, even when fscache is missing or fails', () => {
    for (const command of ['/nonexistent/fscache --root /', 'false']) {
      for (const line of dpkgHookText(command).split('\n').filter((l) => /^(pre|post)-invoke=/.test(l))) {
        const r = spawnSync('sh', ['-c', line.slice(line.indexOf('=') + 1)], { encoding: 'utf8', timeout: 10000 });
        expect(r.status).toBe(0);
        expect(r.stderr).toMatch(/fscache: (pause|resume) failed; dpkg goes on/);
      }
    }
  });

  test('install and remove: only where the package manager is, other content kept, Portage phases wrap the user\'s own', () => {
    const usr = path.join(dir, 'usr.real');
    fs.mkdirSync(path.join(usr, 'lib/fscache/bin'), { recursive: true });
    fs.writeFileSync(path.join(usr, 'lib/fscache/bin/fscache'), '');
    const conf = path.join(dir, 'etc', 'fscache.conf');
    expect(installPackageHooks(paths, conf, path.join(usr, 'lib/fscache'))).toEqual({ installed: [] }); // no dpkg, no Portage here
    fs.mkdirSync(path.join(dir, 'etc/dpkg/dpkg.cfg.d'), { recursive: true });
    fs.mkdirSync(path.join(dir, 'etc/portage'), { recursive: true });
    const bashrc = portageBashrc(paths);
    const userText = 'MY_SETTING=1\npre_pkg_preinst() { echo "user preinst $PF"; return 3; }\n';
    fs.writeFileSync(bashrc, userText);
    // A stand-in for fscache at the path the hook names, recording each call.
    const log = path.join(dir, 'calls');
    const fake = path.join(dir, 'fake-fscache');
    fs.writeFileSync(fake, `#!/bin/sh\necho "$*" >> ${log}\n`, { mode: 0o755 });
    const report = installPackageHooks(paths, conf, path.join(usr, 'lib/fscache'));
    expect(report.installed).toEqual([dpkgHookFile(paths), bashrc]);
    expect(installPackageHooks(paths, conf, path.join(usr, 'lib/fscache')).installed.length).toBe(2); // idempotent
    const text = fs.readFileSync(bashrc, 'utf8');
    expect(text.startsWith(userText + '\n# >>> fscache')).toBe(true);
    expect(text.split('# >>> fscache').length).toBe(2);

    // Portage sources bashrc (maybe twice) and calls the phase functions; an upgrade nests.
    const script = `source ${JSON.stringify(bashrc)}; source ${JSON.stringify(bashrc)}
CATEGORY=dev-libs PF=foo-2; pre_pkg_preinst; echo "rc=$?"
PF=foo-1; pre_pkg_prerm; post_pkg_postrm
PF=foo-2; post_pkg_postinst
ROOT=/mnt/other pre_pkg_preinst >/dev/null`;
    const blockFor = (cmd: string) => portageBlock(cmd);
    fs.writeFileSync(bashrc, userText + '\n' + blockFor(fake + ' --root /'));
    const r = spawnSync('bash', ['-c', script], { encoding: 'utf8', timeout: 10000 });
    expect(r.stdout).toBe('user preinst foo-2\nrc=3\n');
    expect(fs.readFileSync(log, 'utf8')).toBe([
      '--root / pause --holder portage:dev-libs/foo-2',
      '--root / pause --holder portage:dev-libs/foo-1',
      '--root / resume --holder portage:dev-libs/foo-1',
      '--root / resume --holder portage:dev-libs/foo-2',
      '',
    ].join('\n'));
    // A missing fscache: a warning, and the phase goes on.
    fs.writeFileSync(bashrc, blockFor('/nonexistent/fscache --root /'));
    const missing = spawnSync('bash', ['-c', `source ${JSON.stringify(bashrc)}; pre_pkg_preinst; echo "rc=$?"`], { encoding: 'utf8', timeout: 10000 });
    expect(missing.stdout).toBe('rc=0\n');
    expect(missing.stderr).toMatch(/fscache: pause failed; emerge goes on/);

    fs.writeFileSync(bashrc, userText);
    installPackageHooks(paths, conf, path.join(usr, 'lib/fscache'));
    fs.writeFileSync(path.join(dir, 'etc/dpkg/dpkg.cfg.d/other'), 'force-unsafe-io\n');
    removePackageHooks(paths);
    expect(fs.readFileSync(bashrc, 'utf8')).toBe(userText);
    expect(fs.existsSync(dpkgHookFile(paths))).toBe(false);
    expect(fs.readFileSync(path.join(dir, 'etc/dpkg/dpkg.cfg.d/other'), 'utf8')).toBe('force-unsafe-io\n');
    // A file of the administrator's under our name is not ours to remove.
    fs.writeFileSync(dpkgHookFile(paths), 'log=/var/log/mine\n');
    removePackageHooks(paths);
    expect(fs.existsSync(dpkgHookFile(paths))).toBe(true);
    // A bashrc that held only our block goes with it.
    fs.rmSync(bashrc);
    installPackageHooks(paths, conf, path.join(usr, 'lib/fscache'));
    expect(fs.existsSync(bashrc)).toBe(true);
    removePackageHooks(paths);
    expect(fs.existsSync(bashrc)).toBe(false);
  });
});

describe('view-mode sync after an upgrade (no mounts)', () => {
  test('a cached file replaced by one of the same size and mtime (a rebuilt package) is copied afresh, never adopted', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-pkgsync-'));
    try {
      const paths = derivePaths(dir, parseConfig('', 'test'));
      const rel = 'lib/fscache-test/libfscachetest.so.1';
      const real = path.join(paths.realTree, rel);
      const copy = path.join(paths.store, rel);
      for (const f of [real, copy]) fs.mkdirSync(path.dirname(f), { recursive: true });
      const mtime = new Date('2026-12-01T00:00:00Z');
      const v1 = Buffer.alloc(8192, 1);
      const v2 = Buffer.alloc(8192, 2);
      for (const f of [real, copy]) {
        fs.writeFileSync(f, v1);
        fs.utimesSync(f, mtime, mtime);
      }
      const index = StoreIndex.open(paths.index, silentLogger);
      index.put({ path: rel, ...identityOf(fs.lstatSync(real, { bigint: true })), hash: sha256(v1), filledAt: Date.now(), lastAccess: Date.now(), hits: 1 });
      index.close();
      // What dpkg does: the new version written beside, its mtime from the package, renamed over.
      fs.writeFileSync(`${real}.dpkg-new`, v2);
      fs.utimesSync(`${real}.dpkg-new`, mtime, mtime);
      fs.renameSync(`${real}.dpkg-new`, real);

      const r = spawnSync(process.execPath, [path.join(PACKAGE_ROOT, 'dist/cli/main.js'), '--root', dir, 'sync'], { encoding: 'utf8', timeout: 60000 });
      expect(r.status).toBe(0);
      expect(fs.readFileSync(copy).equals(v2)).toBe(true);
      const after = StoreIndex.open(paths.index, silentLogger);
      const entry = after.all().find((e) => e.path === rel);
      after.close();
      expect(entry).toMatchObject({ ino: fs.lstatSync(real, { bigint: true }).ino, hash: sha256(v2) });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
