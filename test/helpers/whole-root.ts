/**
 * A whole root, as an administrator's machine is laid out, for tests that must hold on a
 * real machine and not only in a sandbox run from the checkout:
 *   R/usr.real   an overlay over this machine's /usr (writable; the host's /usr is only the
 *                lower layer, never written), with fscache installed in it as a package:
 *                R/usr.real/lib/fscache (node_modules bound read-only from the checkout) and
 *                R/usr.real/bin/fscache -> ../lib/fscache/bin/fscache; node is /usr/bin/node
 *   R/usr        -> usr.real, as `fscache setup` leaves it
 *   bin, sbin, lib, lib64 -> usr/...   (merged /usr)
 *   R/run        a tmpfs; R/proc, R/sys mounted; R/dev holds the few nodes programs need
 *                (and /dev/fuse); R/etc the basics, R/var/lib/dpkg an empty package database
 * Everything runs by `chroot R` with root `/` and an init-like environment. Every call is
 * bounded: a call that outlives its deadline has the FUSE connections under R aborted
 * (a process stuck on a deadlocked FUSE mount ignores SIGKILL until then), then is killed.
 */
import { execFileSync, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PACKAGE_ROOT } from '../../core/package-root';
import { mountsBelow } from '../../core/mounts';
import { abortFuseBelow, processesOfRoot, RunResult, runBounded } from './bounded';

export { abortFuseBelow };
export type { RunResult };

export interface RunOptions {
  timeoutMs?: number;
  /** Added to INIT_ENV. chroot(8) gets it too, and the host's loader reads LD_* variables: set those inside with /usr/bin/env. */
  env?: Record<string, string>;
  /** Run as this uid/gid (setpriv), e.g. 65534 for an unprivileged attacker. */
  asUser?: number;
  input?: string;
}

export interface WholeRoot {
  root: string;
  /** R/usr.real, the overlay. */
  realTree: string;
  /** Where fscache is installed inside the real tree. */
  packageDir: string;
  /** Runs argv inside `chroot R` with an init-like environment; never hangs past the deadline. */
  run(argv: string[], options?: RunOptions): Promise<RunResult>;
  /** `fscache ...` inside the root, as an init script would run it. */
  fscache(args: string[], options?: RunOptions): Promise<RunResult>;
  /** Starts argv inside the root and returns at once (for programs kept running across events). */
  spawnIn(argv: string[], options?: RunOptions): import('child_process').ChildProcess;
  /** PIDs of every process whose root directory is R. */
  processesInside(): number[];
  /** Aborts every FUSE connection mounted under R (frees processes stuck on it). */
  abortFuse(): void;
  /** The power cut: kill -9 of everything inside R, every mount under R/run and the view's mount point gone, a fresh tmpfs on R/run. */
  powerCut(): void;
  dispose(): Promise<void>;
}

/** The environment an init system gives a service or a boot script. */
export const INIT_ENV = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/root', LANG: 'C.UTF-8', TERM: 'dumb' };

const CHROOT = ['/usr/sbin/chroot', '/sbin/chroot', '/usr/bin/chroot'].find((p) => fs.existsSync(p)) ?? 'chroot';
const HOST_ETC_FILES = ['passwd', 'group', 'shadow', 'ld.so.cache', 'ld.so.conf', 'nsswitch.conf', 'hosts', 'os-release'];
const DEVICES: Array<[string, number, number]> = [['null', 1, 3], ['zero', 1, 5], ['full', 1, 7], ['random', 1, 8], ['urandom', 1, 9], ['tty', 5, 0], ['fuse', 10, 229]];
/** What a package install of fscache holds (no tests, benchmarks or VCS data). */
const PACKAGE_PARTS = ['package.json', 'bin', 'dist', 'loader-hook', 'guard', 'native', 'initscripts'];

export function wholeRootAvailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'whole-root tests need root (mounts, chroot)';
  if (!fs.existsSync('/dev/fuse')) return '/dev/fuse is missing';
  if (!fs.existsSync('/usr/bin/node')) return 'node is not /usr/bin/node on this machine (the root installs fscache beside it)';
  if (!fs.existsSync(path.join(PACKAGE_ROOT, 'dist', 'cli', 'main.js'))) return 'fscache is not built (npm run build)';
  return undefined;
}

function killAll(pids: number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
}

/** Lazily unmounts everything under `dir`, deepest first (never a stat through a FUSE mount). */
function unmountBelow(dir: string): void {
  for (const m of mountsBelow(dir)) spawnSync('umount', ['-l', m], { stdio: 'ignore', timeout: 10000 });
}

export interface WholeRootOptions {
  config?: string;
  prefix?: string;
  /** Trees of /usr (relative) whited out in the overlay: what a test's full copy (a mirror sync) need not carry. */
  prune?: string[];
}

export function createWholeRoot(options: WholeRootOptions = {}): WholeRoot {
  const root = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), options.prefix ?? 'fscache-root-')));
  const realTree = path.join(root, 'usr.real');
  const packageDir = path.join(realTree, 'lib', 'fscache');
  const layers = path.join(root, '.layers');
  const mount = (args: string[]) => execFileSync('mount', args, { stdio: 'pipe', timeout: 10000 });

  const run = (argv: string[], o: RunOptions = {}): Promise<RunResult> => {
    const inner = o.asUser !== undefined ? ['/usr/bin/setpriv', `--reuid=${o.asUser}`, `--regid=${o.asUser}`, '--clear-groups', ...argv] : argv;
    return runBounded(CHROOT, [root, ...inner], { abortBelow: root, timeoutMs: o.timeoutMs, env: { ...INIT_ENV, ...o.env }, input: o.input });
  };

  const wr: WholeRoot = {
    root,
    realTree,
    packageDir,
    run,
    fscache: (args, o) => run(['/usr/bin/fscache', ...args], o),
    spawnIn(argv, o = {}) {
      const inner = o.asUser !== undefined ? ['/usr/bin/setpriv', `--reuid=${o.asUser}`, `--regid=${o.asUser}`, '--clear-groups', ...argv] : argv;
      const child = spawn(CHROOT, [root, ...inner], { env: { ...INIT_ENV, ...o.env }, cwd: '/', stdio: ['ignore', 'pipe', 'pipe'] });
      // Drained unless a caller listens: a full pipe must not stop the program.
      child.stdout!.resume();
      child.stderr!.resume();
      return child;
    },
    processesInside: () => processesOfRoot(root),
    abortFuse: () => abortFuseBelow(root),
    powerCut() {
      killAll(processesOfRoot(root));
      abortFuseBelow(root);
      killAll(processesOfRoot(root));
      // What the next boot sees: nothing of fscache mounted (the view's mount point may be anywhere
      // under R but the real tree's overlay), and an empty /run.
      for (const m of mountsBelow(root)) {
        if (m === realTree || m.startsWith(realTree + '/') || m === path.join(root, 'proc') || m.startsWith(path.join(root, 'sys'))) continue;
        spawnSync('umount', ['-l', m], { stdio: 'ignore', timeout: 10000 });
      }
      mount(['-t', 'tmpfs', '-o', 'mode=755', 'tmpfs', path.join(root, 'run')]);
    },
    async dispose() {
      // Bounded at every step; a deadlocked view is freed by aborting its connection.
      if (processesOfRoot(root).length > 0) await run(['/usr/bin/fscache', 'stop'], { timeoutMs: 30000 });
      for (let i = 0; i < 3; i++) {
        abortFuseBelow(root);
        killAll(processesOfRoot(root));
        await new Promise((r) => setTimeout(r, 200));
      }
      unmountBelow(root);
      if (mountsBelow(root).length === 0) fs.rmSync(root, { recursive: true, force: true });
    },
  };

  try {
    for (const d of ['upper', 'work']) fs.mkdirSync(path.join(layers, d), { recursive: true });
    for (const p of options.prune ?? []) {
      if (!fs.existsSync(path.join('/usr', p))) continue;
      fs.mkdirSync(path.dirname(path.join(layers, 'upper', p)), { recursive: true });
      execFileSync('mknod', [path.join(layers, 'upper', p), 'c', '0', '0']); // an overlay whiteout
    }
    fs.mkdirSync(realTree);
    mount(['-t', 'overlay', 'overlay', '-o', `lowerdir=/usr,upperdir=${layers}/upper,workdir=${layers}/work`, realTree]);
    // fscache as a package installs it: its files in /usr/lib/fscache, its command in /usr/bin.
    fs.mkdirSync(packageDir, { recursive: true });
    for (const part of PACKAGE_PARTS) {
      const src = path.join(PACKAGE_ROOT, part);
      if (fs.existsSync(src)) execFileSync('cp', ['-a', src, packageDir], { timeout: 60000 });
    }
    fs.mkdirSync(path.join(packageDir, 'node_modules'));
    mount(['--bind', '-o', 'ro', fs.realpathSync(path.join(PACKAGE_ROOT, 'node_modules')), path.join(packageDir, 'node_modules')]);
    fs.rmSync(path.join(realTree, 'bin', 'fscache'), { force: true });
    fs.symlinkSync('../lib/fscache/bin/fscache', path.join(realTree, 'bin', 'fscache'));

    fs.symlinkSync('usr.real', path.join(root, 'usr'));
    for (const dir of ['bin', 'sbin', 'lib', 'lib64']) fs.symlinkSync(`usr/${dir}`, path.join(root, dir));
    fs.mkdirSync(path.join(root, 'etc'));
    for (const f of HOST_ETC_FILES) {
      if (fs.existsSync(`/etc/${f}`)) fs.copyFileSync(`/etc/${f}`, path.join(root, 'etc', f));
    }
    if (options.config) fs.writeFileSync(path.join(root, 'etc', 'fscache.conf'), options.config);
    for (const dir of ['tmp', 'var/tmp']) {
      fs.mkdirSync(path.join(root, dir), { recursive: true });
      fs.chmodSync(path.join(root, dir), 0o1777);
    }
    fs.mkdirSync(path.join(root, 'root'), { mode: 0o700 });
    // An empty package database: the root's own dpkg installs into it.
    const dpkg = path.join(root, 'var', 'lib', 'dpkg');
    for (const d of ['info', 'updates', 'triggers']) fs.mkdirSync(path.join(dpkg, d), { recursive: true });
    for (const f of ['status', 'available']) fs.writeFileSync(path.join(dpkg, f), '');
    fs.mkdirSync(path.join(root, 'etc', 'dpkg', 'dpkg.cfg.d'), { recursive: true });
    fs.mkdirSync(path.join(root, 'dev'));
    for (const [name, major, minor] of DEVICES) {
      execFileSync('mknod', ['-m', '666', path.join(root, 'dev', name), 'c', String(major), String(minor)]);
    }
    fs.mkdirSync(path.join(root, 'dev', 'shm'), { mode: 0o1777 });
    for (const d of ['run', 'proc', 'sys']) fs.mkdirSync(path.join(root, d));
    mount(['-t', 'tmpfs', '-o', 'mode=755', 'tmpfs', path.join(root, 'run')]);
    mount(['-t', 'proc', 'proc', path.join(root, 'proc')]);
    mount(['-t', 'sysfs', 'sysfs', path.join(root, 'sys')]);
  } catch (err) {
    unmountBelow(root);
    if (mountsBelow(root).length === 0) fs.rmSync(root, { recursive: true, force: true });
    throw err;
  }
  return wr;
}
