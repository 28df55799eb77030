/**
 * A sandbox root for the demo, tests and benchmarks: a temporary directory laid out
 * like a merged-/usr system whose real tree is this machine's /usr bound read-only
 * (or a directory of copies, for tests that change files). Nothing outside the
 * sandbox is written; the host's /usr is only ever read.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { mountsBelow } from '../fs/service/preflight';

export interface Sandbox {
  root: string;
  realTree: string;
  /** Runs a program inside a chroot of the sandbox root. */
  chrootArgs(argv: string[]): [string, string[]];
  /** Binds `source` read-only at `dest` (inside the sandbox); undone by cleanup(). */
  bindReadOnly(source: string, dest: string): void;
  /** Mounts an overlay of `lower` (never written) at `dest`, its upper layer inside the sandbox; undone by cleanup(). */
  overlay(lower: string, dest: string): void;
  cleanup(): void;
}

// The host's chroot(8), found once; the programs' own PATH is the sandbox's.
const CHROOT = ['/usr/sbin/chroot', '/sbin/chroot', '/usr/bin/chroot'].find((p) => fs.existsSync(p)) ?? 'chroot';
const HOST_ETC_FILES = ['passwd', 'group', 'ld.so.cache', 'ld.so.conf', 'nsswitch.conf', 'hosts'];
const DEVICES: Array<[string, number, number]> = [['null', 1, 3], ['zero', 1, 5], ['urandom', 1, 9], ['random', 1, 8]];

/**
 * Builds R with R/usr.real (read-only bind of `hostUsr`, or an empty directory when
 * `copy` is set), R/usr -> usr.view (the view's mount point), and the merged-/usr links, /etc basics,
 * device nodes and /tmp that programs need in a chroot. With `beforeSetup`, R/usr is
 * an empty directory and there is no R/usr.real, as before `fscache setup`.
 */
export function makeSandbox(options: { hostUsr?: string; copy?: boolean; prefix?: string; beforeSetup?: boolean } = {}): Sandbox {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), options.prefix ?? 'fscache-sandbox-'));
  const realTree = path.join(root, 'usr.real');
  fs.mkdirSync(realTree);
  const sandbox: Sandbox = {
    root,
    realTree,
    chrootArgs: (argv) => [CHROOT, [root, ...argv]],
    bindReadOnly: (source, dest) => {
      execFileSync('mount', ['--bind', '-o', 'ro', source, dest]);
      // Older mount(8) ignores ro on the first bind: remount to be sure.
      execFileSync('mount', ['-o', 'remount,bind,ro', dest]);
    },
    overlay: (lower, dest) => {
      const layers = fs.mkdtempSync(path.join(root, '.overlay-'));
      for (const d of ['upper', 'work']) fs.mkdirSync(path.join(layers, d));
      execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lower},upperdir=${layers}/upper,workdir=${layers}/work`, dest]);
    },
    cleanup: () => {
      // Everything mounted below the root (binds, views, dead views), deepest first.
      for (const m of mountsBelow(root)) execFileSync('umount', ['-l', m], { stdio: 'ignore' });
      // Never remove through a mount that is still there.
      if (mountsBelow(root).length === 0) fs.rmSync(root, { recursive: true, force: true });
    },
  };
  try {
    if (options.beforeSetup) {
      // As an administrator finds a system: R/usr a directory, no R/usr.real yet.
      fs.rmdirSync(realTree);
      fs.mkdirSync(path.join(root, 'usr'));
    } else {
      if (!options.copy) sandbox.bindReadOnly(options.hostUsr ?? '/usr', realTree);
      fs.symlinkSync('usr.view', path.join(root, 'usr'));
    }
    for (const dir of ['bin', 'sbin', 'lib', 'lib64']) fs.symlinkSync(`usr/${dir}`, path.join(root, dir));
    fs.mkdirSync(path.join(root, 'etc'));
    for (const f of HOST_ETC_FILES) {
      if (fs.existsSync(`/etc/${f}`)) fs.copyFileSync(`/etc/${f}`, path.join(root, 'etc', f));
    }
    fs.mkdirSync(path.join(root, 'tmp'), { mode: 0o1777 });
    fs.chmodSync(path.join(root, 'tmp'), 0o1777);
    fs.mkdirSync(path.join(root, 'dev'));
    for (const [name, major, minor] of DEVICES) {
      execFileSync('mknod', ['-m', '666', path.join(root, 'dev', name), 'c', String(major), String(minor)]);
    }
    fs.mkdirSync(path.join(root, 'run', 'fscache'), { recursive: true });
  } catch (err) {
    sandbox.cleanup();
    throw err;
  }
  return sandbox;
}
