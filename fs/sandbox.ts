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
import { isMountPoint } from './preflight';

export interface Sandbox {
  root: string;
  realTree: string;
  /** Runs a program inside a chroot of the sandbox root. */
  chrootArgs(argv: string[]): [string, string[]];
  cleanup(): void;
}

// The host's chroot(8), found once; the programs' own PATH is the sandbox's.
const CHROOT = ['/usr/sbin/chroot', '/sbin/chroot', '/usr/bin/chroot'].find((p) => fs.existsSync(p)) ?? 'chroot';
const HOST_ETC_FILES = ['passwd', 'group', 'ld.so.cache', 'ld.so.conf', 'nsswitch.conf', 'hosts'];
const DEVICES: Array<[string, number, number]> = [['null', 1, 3], ['zero', 1, 5], ['urandom', 1, 9], ['random', 1, 8]];

/**
 * Builds R with R/usr.real (read-only bind of `hostUsr`, or an empty directory when
 * `copy` is set), R/usr -> run/fscache/view, and the merged-/usr links, /etc basics,
 * device nodes and /tmp that programs need in a chroot.
 */
export function makeSandbox(options: { hostUsr?: string; copy?: boolean; prefix?: string } = {}): Sandbox {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), options.prefix ?? 'fscache-sandbox-'));
  const realTree = path.join(root, 'usr.real');
  fs.mkdirSync(realTree);
  const mounts: string[] = [];
  const sandbox: Sandbox = {
    root,
    realTree,
    chrootArgs: (argv) => [CHROOT, [root, ...argv]],
    cleanup: () => {
      for (const m of mounts.reverse()) {
        if (isMountPoint(m)) execFileSync('umount', ['-l', m], { stdio: 'ignore' });
      }
      // Never remove through a mount that is still there.
      if (!isMountPoint(realTree)) fs.rmSync(root, { recursive: true, force: true });
    },
  };
  try {
    if (!options.copy) {
      execFileSync('mount', ['--bind', '-o', 'ro', options.hostUsr ?? '/usr', realTree]);
      mounts.push(realTree);
      execFileSync('mount', ['-o', 'remount,bind,ro', realTree]);
    }
    fs.symlinkSync('run/fscache/view', path.join(root, 'usr'));
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
