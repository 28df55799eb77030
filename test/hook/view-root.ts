/**
 * A root for the loader hook with the view: R/usr.real an overlay over this machine's /usr (so
 * the real tree is writable and the host's is never touched), R/proc mounted, fscache run by its
 * CLI with --root R as `start` would run it, programs launched by `chroot R` with the
 * environment a login would get from R/etc/environment. `dispose` ends what the tests started
 * (by pid), aborts any FUSE connection below R (a hung view never blocks the cleanup), unmounts
 * and removes R.
 */
import { execFileSync, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { makeSandbox, Sandbox } from '../../dev/sandbox';
import { mountsBelow } from '../../fs/service/preflight';
import { CLI } from './sandbox';
import { fuseMountsBelow } from '../../fs/fuse/fusectl';
import { abortFuseBelow as abortFuseConnections } from '../helpers/bounded';

export interface ViewRoot {
  sandbox: Sandbox;
  root: string;
  realTree: string;
  cli(...args: string[]): { status: number | null; stdout: string; stderr: string };
  /** KEY=VALUE lines of R/etc/environment, as pam_env gives them to a login. */
  loginEnv(): Record<string, string>;
  /** The pids of processes running fscache with --root R. */
  fscachePids(): number[];
  dispose(): void;
}

export function makeViewRoot(conf: string): ViewRoot {
  const sandbox = makeSandbox({ copy: true, prefix: 'fscache-hookview-' });
  const root = sandbox.root;
  const ovl = path.join(root, '.overlay');
  try {
    for (const d of ['upper', 'work']) fs.mkdirSync(path.join(ovl, d), { recursive: true });
    execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=/usr,upperdir=${ovl}/upper,workdir=${ovl}/work`, sandbox.realTree]);
    fs.mkdirSync(path.join(root, 'proc'));
    execFileSync('mount', ['-t', 'proc', 'proc', path.join(root, 'proc')]);
    fs.writeFileSync(path.join(root, 'etc', 'fscache.conf'), conf);
  } catch (e) {
    sandbox.cleanup();
    throw e;
  }
  const vr: ViewRoot = {
    sandbox,
    root,
    realTree: sandbox.realTree,
    cli: (...args) => {
      const r = spawnSync(process.execPath, [CLI, '--root', root, ...args], { encoding: 'utf8', timeout: 90_000 });
      return { status: r.status, stdout: r.stdout, stderr: r.stderr };
    },
    loginEnv: () => {
      const env: Record<string, string> = { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: '/' };
      let text = '';
      try {
        text = fs.readFileSync(path.join(root, 'etc', 'environment'), 'utf8');
      } catch {
        return env;
      }
      for (const line of text.split('\n')) {
        const m = /^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(["']?)(.*)\2\s*$/.exec(line);
        if (m) env[m[1]] = m[3];
      }
      return env;
    },
    fscachePids: () => {
      const out: number[] = [];
      for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
        try {
          const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
          const at = argv.indexOf('--root');
          if (at >= 0 && argv[at + 1] === root && Number(pid) !== process.pid) out.push(Number(pid));
        } catch {
          // gone
        }
      }
      return out;
    },
    dispose: () => {
      for (const pid of vr.fscachePids()) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
      }
      abortFuseBelow(root);
      sandbox.cleanup();
    },
  };
  return vr;
}

/** Aborts every FUSE connection mounted below `root` (fusectl), then detaches the mounts: never a stat of the mount point. */
export function abortFuseBelow(root: string): void {
  const fuse = fuseMountsBelow(root);
  abortFuseConnections(root);
  for (const m of fuse) spawnSync('umount', ['-l', m.mountPoint], { timeout: 10_000 });
}

/** Unmounts everything under `dir` (deepest first), lazily. */
export function unmountBelow(dir: string): void {
  for (const m of mountsBelow(dir)) spawnSync('umount', ['-l', m], { timeout: 10_000 });
}

export interface Held {
  pid: number;
  out: string;
  /** /proc/PID/maps read from outside while it runs. */
  maps: string;
  release(): Promise<{ status: number | null; out: string; err: string }>;
}

/**
 * chroot(8)'s arguments to run `argv` in `root` with exactly `env`: set by R's own env(1) inside the
 * chroot, so that the host's chroot program is not itself started with R's LD_AUDIT.
 */
export function inChroot(root: string, argv: string[], env: Record<string, string>): string[] {
  return [root, '/usr/bin/env', '-i', ...Object.entries(env).map(([k, v]) => `${k}=${v}`), ...argv];
}

/** Runs `argv` in a chroot of `root` with `env` until it prints "ready"; bounded by `timeoutMs`. */
export function launchHeld(root: string, argv: string[], env: Record<string, string>, timeoutMs = 60_000): Promise<Held> {
  return new Promise((resolve, reject) => {
    const c = spawn('/usr/sbin/chroot', inChroot(root, argv, env), { env: {}, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    const timer = setTimeout(() => {
      c.kill('SIGKILL');
      reject(new Error(`${argv.join(' ')}: no "ready" within ${timeoutMs} ms: ${out}${err}`));
    }, timeoutMs);
    const exited = new Promise<{ status: number | null; out: string; err: string }>((r) => c.on('close', (status) => r({ status, out, err })));
    c.stderr.on('data', (d) => (err += d));
    c.stdout.on('data', (d) => {
      out += d;
      if (!out.includes('ready\n')) return;
      clearTimeout(timer);
      let maps = '';
      try {
        maps = fs.readFileSync(`/proc/${c.pid}/maps`, 'utf8');
      } catch {
        // exited already: the caller sees an empty map
      }
      resolve({
        pid: c.pid!, out, maps,
        release: () => {
          c.stdin.end();
          const kill = setTimeout(() => c.kill('SIGKILL'), 10_000);
          return exited.finally(() => clearTimeout(kill));
        },
      });
    });
    exited.then((r) => {
      clearTimeout(timer);
      if (!out.includes('ready\n')) reject(new Error(`${argv.join(' ')} exited ${r.status}: ${out}${err}`));
    });
  });
}

/** Runs `during` while `held` runs, then releases it (also when `during` throws): how it ended. */
export async function whileHeld(held: Held, during: () => Promise<void>): Promise<{ status: number | null; out: string; err: string }> {
  try {
    await during();
  } catch (e) {
    await held.release();
    throw e;
  }
  return held.release();
}

/** "fn <name> <hex offset>" lines of hookdemo.c, and its checksum. */
export function parseDemo(out: string): { checksum: string; offsets: Record<string, number> } {
  const offsets: Record<string, number> = {};
  for (const m of out.matchAll(/^fn (\w+) ([0-9a-f]+)$/gm)) offsets[m[1]] = parseInt(m[2], 16);
  return { checksum: /^checksum (\d+)$/m.exec(out)?.[1] ?? `none in: ${out}`, offsets };
}
