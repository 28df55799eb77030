/**
 * The kernel session (fuse_session = kernel) over real mounts: what it negotiates,
 * bytes through it, real programs in a chroot, warm launches the kernel answers
 * alone (request counts from the view's state file), freshness through invalidation
 * notices with long cache timeouts, mmap, and stop while a process holds a mapping.
 */
import { ChildProcessWithoutNullStreams, execFileSync, spawn } from 'child_process';
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { runInChroot } from '../cli/demo';
import { InitFlag, Op } from '../fs/fuse/fuse-protocol';
import { StoreIndex } from '../fs/store/index-db';
import { silentLogger } from '../core/log';
import { isMountPoint } from '../fs/service/preflight';
import type { Attr, ViewHandlers } from '../fs/fuse/session';
import { KernelSession } from '../fs/fuse/session-kernel';
import { CLI_ENTRY, startViewProcess } from '../fs/service/view-process';
import { createViewSandbox, fuseAvailable, replaceByRename, rewriteInPlace, ViewSandbox, waitFor } from './helpers/view-sandbox';
import { sha } from './helpers/hash';
import { afterEachDispose } from './helpers/cleanup';

const skip = fuseAvailable();
const maybe = skip ? describe.skip : describe;
if (skip) console.warn(`kernel session tests skipped: ${skip}`);

/** Long validity: what the kernel shows must then come from notifications, not from expiry. */
const LONG = 'fuse_session = kernel\nentry_timeout = 600\nattr_timeout = 600\nnegative_timeout = 600\naccess_flush_ms = 100\n';

const LAUNCHES: Array<[string, string[], RegExp]> = [
  ['git --version', ['/usr/bin/git', '--version'], /^git version /],
  ['perl -e', ['/usr/bin/perl', '-MPOSIX', '-e', 'print floor(7.9), "\\n"'], /^7\n$/],
  // A fixed hash seed: with Python's random one, each launch may take code paths (and touch pages) no earlier one did.
  ['python3 imports', ['/usr/bin/env', 'PYTHONHASHSEED=0', '/usr/bin/python3', '-c', 'import json, zlib, sqlite3; print(zlib.crc32(b"x"))'], /^\d+\n$/],
];

/** Request counts after the view's next state flush. */
async function countsNow(vs: ViewSandbox): Promise<Record<string, number>> {
  await new Promise((r) => setTimeout(r, 350));
  return { ...(vs.view!.state()?.requests ?? {}) };
}

/** Waits until no fill has landed and no directory was newly watched for a second. */
async function settle(vs: ViewSandbox): Promise<void> {
  let last = '';
  for (let i = 0; i < 30; i++) {
    const st = vs.view!.state();
    const now = `${st?.store?.fills}/${st?.watcher?.directories}/${st?.watcher?.invalidations}`;
    if (now === last) return;
    last = now;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function delta(before: Record<string, number>, after: Record<string, number>): Record<string, number> {
  const d: Record<string, number> = {};
  for (const [k, v] of Object.entries(after)) if (v !== (before[k] ?? 0)) d[k] = v - (before[k] ?? 0);
  return d;
}

maybe('kernel session over the host /usr', () => {
  let vs: ViewSandbox | undefined;
  afterEachDispose(() => vs, () => (vs = undefined));

  test('negotiates no-open, no-opendir and cached symlinks, and serves the same bytes', async () => {
    vs = createViewSandbox({ config: 'fuse_session = kernel\n' });
    await vs.startView();
    expect(vs.view!.state()!.session).toBe('kernel');
    for (const flag of ['NO_OPEN_SUPPORT', 'NO_OPENDIR_SUPPORT', 'CACHE_SYMLINKS', 'ASYNC_READ', 'MAX_PAGES']) {
      expect(vs.view!.log()).toContain(flag);
    }
    const dir = 'lib/x86_64-linux-gnu';
    const names = fs.readdirSync(path.join(vs.paths.realTree, dir)).sort();
    expect(fs.readdirSync(vs.inView(dir)).sort()).toEqual(names);
    let checked = 0;
    for (const name of names) {
      const rel = path.join(dir, name);
      const st = fs.lstatSync(path.join(vs.paths.realTree, rel));
      if (st.isSymbolicLink()) {
        expect(fs.readlinkSync(vs.inView(rel))).toBe(fs.readlinkSync(path.join(vs.paths.realTree, rel)));
      } else if (st.isFile() && st.size < 4 << 20 && checked++ < 150) {
        expect({ rel, hash: sha(fs.readFileSync(vs.inView(rel))) }).toEqual({ rel, hash: sha(fs.readFileSync(path.join(vs.paths.realTree, rel))) });
      }
    }
    expect(checked).toBeGreaterThan(100);
    // A large file crosses many 1 MiB reads and the readahead window.
    const big = largestFile(vs.paths.realTree, dir);
    expect(sha(fs.readFileSync(vs.inView(big)))).toBe(sha(fs.readFileSync(path.join(vs.paths.realTree, big))));
    expect(fs.statfsSync(vs.inView('bin')).blocks).toBeGreaterThan(0);
    expect(() => fs.writeFileSync(vs!.inView('bin/fscache-nope'), 'x')).toThrow(/EROFS|EACCES/);
    expect(() => fs.readFileSync(vs!.inView('bin/fscache-no-such-file'))).toThrow(/ENOENT/);
  });

  test('git, perl and python3 run in the chroot; a warm relaunch after 2 s idle sends no open or release, and few names', async () => {
    // The default 1 s timeouts: what the kernel keeps past them is what the watcher vouches for.
    vs = createViewSandbox({ config: 'fuse_session = kernel\naccess_flush_ms = 100\n' });
    await vs.startView();
    for (const [label, argv, expected] of LAUNCHES) {
      for (let i = 0; i < 2; i++) {
        const r = await runInChroot(vs.sandbox, argv);
        expect({ label, code: r.code, stderr: r.stderr }).toEqual({ label, code: 0, stderr: '' });
        expect(r.stdout).toMatch(expected);
      }
    }
    const coldReads = (await countsNow(vs)).read ?? 0;
    // Let the copies land: a directory the watcher starts watching floods it with events
    // for every entry (chokidar), each one an invalidation. Then once more, warm.
    await settle(vs);
    for (const [, argv] of LAUNCHES) expect((await runInChroot(vs.sandbox, argv)).code).toBe(0);
    await settle(vs); // a loaded machine may still be processing the warm pass's events
    await new Promise((r) => setTimeout(r, 2200));
    const before = await countsNow(vs);
    expect(before.open ?? 0).toBeLessThanOrEqual(1); // the one ENOSYS answer
    for (const [, argv] of LAUNCHES) expect((await runInChroot(vs.sandbox, argv)).code).toBe(0);
    const d = delta(before, await countsNow(vs));
    for (const op of ['open', 'release', 'opendir', 'releasedir', 'flush']) {
      expect({ op, n: d[op] ?? 0, all: d }).toEqual({ op, n: 0, all: d });
    }
    // Names: the real tree here is the host's /usr, which other processes may change meanwhile (a
    // python3 on the host writing __pycache__), and a change is an event that invalidates names in
    // its directory. CI saw 1, and 4+ with another test run beside; without vouching these launches
    // sent 25-131 lookups.
    const names = (d.lookup ?? 0) + (d.readlink ?? 0) + (d.readdir ?? 0);
    console.log(`warm relaunch: ${names} name requests; ${JSON.stringify(d)}`);
    expect({ namesAtMost10: names <= 10, names, all: d }).toMatchObject({ namesAtMost10: true });
    // A launch may still touch a page no earlier launch did: such a cold page is read. Every
    // page read before comes from the kernel: a small fraction of what the first launches read
    // (measured 3-25 of 240-250 here, the upper end with builds running beside: a quarter bounds it,
    // where a session that kept no pages would read them all again).
    expect(coldReads).toBeGreaterThan(100);
    expect(d.read ?? 0).toBeLessThanOrEqual(coldReads / 4);
    // What else still reaches the view: security.capability at each exec and Python's TCGETS per file.
    expect(Object.keys(d).filter((k) => !['getxattr', 'ioctl', 'getattr', 'read', 'lookup', 'readlink', 'readdir'].includes(k))).toEqual([]);
  });

  test('on a kernel that offers fewer flags, OPEN and OPENDIR are served with handles and programs still run', async () => {
    vs = createViewSandbox({ config: 'fuse_session = kernel\naccess_flush_ms = 100\n' });
    // The view then asks the kernel only for the flags not named.
    vs.view = await startViewProcess(vs.sandbox.root, vs.paths.viewMount, vs.paths.viewState, [], undefined, {
      FSCACHE_SESSION_REFUSE: 'NO_OPEN_SUPPORT,NO_OPENDIR_SUPPORT,CACHE_SYMLINKS',
    });
    expect(vs.view!.log()).toMatch(/without NO_OPEN_SUPPORT CACHE_SYMLINKS NO_OPENDIR_SUPPORT/);
    for (let i = 0; i < 2; i++) {
      const r = await runInChroot(vs.sandbox, LAUNCHES[2][1]);
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    }
    const rel = 'bin/perl';
    expect(sha(fs.readFileSync(vs.inView(rel)))).toBe(sha(fs.readFileSync(path.join(vs.paths.realTree, rel))));
    expect(fs.readdirSync(vs.inView('bin')).sort()).toEqual(fs.readdirSync(path.join(vs.paths.realTree, 'bin')).sort());
    const counts = await countsNow(vs);
    expect(counts.open).toBeGreaterThan(10);
    expect(counts.release).toBeGreaterThan(10);
    expect(counts.opendir).toBeGreaterThan(0);
    expect(counts.readlink).toBeGreaterThan(0);
    // Every handle given out by OPEN was given back: the view holds no more than the node handles.
    expect(vs.view!.state()!.view.opens).toBeGreaterThan(10);
  });

  test('an aborted connection (fusectl abort): the mount answers ENOTCONN and stop returns at once', async () => {
    vs = createViewSandbox({ config: 'fuse_session = kernel\n' });
    await vs.startView();
    expect(fs.readdirSync(vs.inView('bin')).length).toBeGreaterThan(10);
    // The connection's number is the mount's device minor; fusectl is mounted privately here.
    const dev = fs.statSync(vs.paths.viewMount).dev;
    const minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    const ctl = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-fusectl-'));
    try {
      execFileSync('mount', ['-t', 'fusectl', 'fscache-test-fusectl', ctl]);
      fs.writeFileSync(path.join(ctl, String(minor), 'abort'), '1');
    } finally {
      if (isMountPoint(ctl)) execFileSync('umount', [ctl]);
      fs.rmdirSync(ctl);
    }
    expect(await waitFor(() => /closed the connection/.test(vs!.view!.log()), 5000)).toBeGreaterThanOrEqual(0);
    expect(() => fs.readdirSync(vs!.paths.viewMount)).toThrow(/ENOTCONN/); // not listed before: no cache
    const t0 = Date.now();
    expect(await vs.view!.stop(10000)).toBe(0);
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  test('a process exiting with its view mounted does not hang on the reader thread: its own exit code, or SIGKILL when detached and in use', async () => {
    // Node joins worker threads at exit, and the reader thread sits in read(2) on /dev/fuse.
    const sessionModule = path.join(path.dirname(path.dirname(CLI_ENTRY)), 'fs', 'fuse', 'session-kernel.js');
    const script = `
      const { KernelSession } = require(${JSON.stringify(sessionModule)});
      const cp = require('child_process');
      const [dir, how] = process.argv.slice(1);
      const t = new Date();
      const attr = { mode: 0o40755, size: 0, mtime: t, ctime: t, atime: t, nlink: 2, uid: 0, gid: 0, ino: 1, dev: 1, blocks: 0, blksize: 4096, rdev: 0 };
      const s = new KernelSession({ getattr: async () => attr }, { mountpoint: dir, attrTimeout: 1, entryTimeout: 1, negativeTimeout: 1, fsname: 'fscache' });
      s.mount().then(() => {
        if (how === 'exit') return process.exit(3);
        // A user keeps the connection alive past the lazy unmount (cd after exec: spawn
        // itself waits for the child, which would wait for this thread to answer).
        const user = cp.spawn('sh', ['-c', 'cd "$0" && echo in && sleep 30', dir], { stdio: ['ignore', 'pipe', 'ignore'] });
        console.log('user', user.pid);
        user.stdout.once('data', () => { cp.execFileSync('umount', ['-l', dir]); process.exit(4); });
      });`;
    for (const [how, expected] of [['exit', { code: 3, signal: null }], ['detached', { code: null, signal: 'SIGKILL' }]] as const) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-exit-'));
      const child = spawn(process.execPath, ['-e', script, dir, how], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      const t0 = Date.now();
      const ended = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
        const timer = setTimeout(() => child.kill('SIGKILL'), 15000);
        child.on('exit', (code, signal) => {
          clearTimeout(timer);
          resolve({ code, signal });
        });
      });
      const user = /user (\d+)/.exec(out);
      if (user) process.kill(Number(user[1]), 'SIGKILL');
      if (isMountPoint(dir)) execFileSync('umount', ['-l', dir]); // a dead view's mount stays until unmounted
      fs.rmdirSync(dir);
      expect({ how, ...ended }).toEqual({ how, ...expected });
      expect(Date.now() - t0).toBeLessThan(10000);
    }
  });

  test('mmap through the view, and stop while a process holds a mapping: it keeps faulting pages in, then the view exits', async () => {
    vs = createViewSandbox({ config: 'fuse_session = kernel\n' });
    await vs.startView();
    const big = largestFile(vs.paths.realTree, 'lib/x86_64-linux-gnu');
    const expected = sha(fs.readFileSync(path.join(vs.paths.realTree, big)));
    // Maps the file, touches its first page only, waits for a line, then hashes all of it.
    const script = [
      'import mmap,hashlib,sys',
      `f=open("/usr/${big}","rb");m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ)`,
      'm[0];print("mapped",flush=True);sys.stdin.readline()',
      'print(hashlib.sha256(m[:]).hexdigest(),flush=True)',
    ].join('\n');
    const [cmd, args] = vs.sandbox.chrootArgs(['/usr/bin/python3', '-c', script]);
    const py = spawn(cmd, args, { env: { PATH: '/usr/bin:/bin', LANG: 'C' } }) as ChildProcessWithoutNullStreams;
    let out = '';
    py.stdout.on('data', (d) => (out += d));
    try {
      expect(await waitFor(() => out.includes('mapped'), 20000)).toBeGreaterThanOrEqual(0);
      const view = vs.view!;
      const stopped = view.stop(60000);
      // Detached: gone from the mount table, but the process serves on for its user.
      expect(await waitFor(() => !isMountPoint(vs!.paths.viewMount), 5000)).toBeGreaterThanOrEqual(0);
      await new Promise((r) => setTimeout(r, 300));
      expect(view.child.exitCode).toBeNull();
      py.stdin.write('\n');
      const code = await new Promise<number | null>((resolve) => py.once('exit', resolve));
      expect(code).toBe(0);
      expect(out.split('\n')[1]).toBe(expected);
      // The last user is gone: the kernel ends the connection and the view exits by itself.
      expect(await stopped).toBe(0);
      expect(view.log()).toContain('view stopped');
    } finally {
      if (py.exitCode === null) py.kill('SIGKILL');
    }
  });
});

maybe('kernel session on a changing real tree', () => {
  let vs: ViewSandbox | undefined;
  afterEachDispose(() => vs, () => (vs = undefined));

  const writeReal = (rel: string, content: Buffer) => {
    const file = path.join(vs!.paths.realTree, rel);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, content);
  };

  test('kill -9 of the view during fills started by first reads, then remount: the new view serves every file whole', async () => {
    vs = createViewSandbox({ copy: true, config: 'fuse_session = kernel\naccess_flush_ms = 100\nfill_concurrency = 4\n' });
    const files = Array.from({ length: 12 }, (_, i) => [`lib/libk${i}.so`, randomBytes(2 * 1024 * 1024)] as const);
    for (const [rel, content] of files) writeReal(rel, content);
    const view = await vs.startView();
    // With no OPEN reaching the view, a file's copy starts at its first READ.
    const one = Buffer.alloc(1);
    for (const [rel] of files) {
      const fd = fs.openSync(vs.inView(rel), 'r');
      fs.readSync(fd, one, 0, 1, 0);
      fs.closeSync(fd);
    }
    await new Promise((r) => setTimeout(r, 40));
    view.child.kill('SIGKILL');
    await new Promise((r) => view.child.once('exit', r));
    expect(isMountPoint(vs.paths.viewMount)).toBe(true); // dead, still in the mount table
    await vs.startView(); // clears the dead mount, recovers the store
    // The dead mount and the old state file satisfy startView at once: wait for the new mount.
    expect(await waitFor(() => /mounted at/.test(vs!.view!.log()), 10000)).toBeGreaterThanOrEqual(0);
    for (const [rel, content] of files) expect({ rel, hash: sha(fs.readFileSync(vs.inView(rel))) }).toEqual({ rel, hash: sha(content) });
    // Every file gets a whole copy (some may have landed before the kill), and the index agrees.
    const indexed = () => {
      const ix = StoreIndex.open(vs!.paths.index, silentLogger, { readonly: true });
      try {
        return ix.all();
      } finally {
        ix.close();
      }
    };
    expect(await waitFor(() => indexed().length === files.length, 20000, 100)).toBeGreaterThanOrEqual(0);
    for (const e of indexed()) expect({ path: e.path, hash: sha(fs.readFileSync(path.join(vs.paths.store, e.path))) }).toEqual({ path: e.path, hash: e.hash });
    for (const [rel, content] of files) expect(sha(fs.readFileSync(vs.inView(rel)))).toBe(sha(content));
  });

  test('a package operation makes the kernel forget what the watcher vouched for: the next stat asks the real tree', async () => {
    vs = createViewSandbox({ copy: true, config: 'fuse_session = kernel\naccess_flush_ms = 100\n' });
    const dpkgInfo = path.join(vs.sandbox.root, 'var/lib/dpkg/info');
    fs.mkdirSync(dpkgInfo, { recursive: true });
    writeReal('lib/deep/libv.so.1', Buffer.from('v'));
    await vs.startView();
    const statAll = () => ['lib/deep/libv.so.1', 'lib/deep/absent.so'].forEach((rel) => fs.existsSync(vs!.inView(rel)));
    statAll();
    await new Promise((r) => setTimeout(r, 1500)); // past the 1 s timeouts: only vouching keeps them
    const before = await countsNow(vs);
    const metaBefore = vs.view!.state()!.view.metaFromReal;
    statAll();
    expect(delta(before, await countsNow(vs)).lookup ?? 0).toBe(0);

    fs.writeFileSync(path.join(dpkgInfo, 'libv.list'), '/usr/lib/deep/libv.so.1\n'); // what dpkg writes on install
    await new Promise((r) => setTimeout(r, 800)); // chokidar's report and the re-check after 300 ms
    const afterOp = await countsNow(vs);
    statAll();
    // lib, deep, the file and the absent name: looked up again, and read from the real tree.
    expect(delta(afterOp, await countsNow(vs)).lookup ?? 0).toBeGreaterThanOrEqual(4);
    expect(vs.view!.state()!.view.metaFromReal - metaBefore).toBeGreaterThanOrEqual(2);
  });

  test('with 600 s cache timeouts, a changed, replaced or new file is seen within a second (the watcher invalidates)', async () => {
    vs = createViewSandbox({ copy: true, config: LONG });
    const rel = 'lib/libfresh.so.1';
    const v1 = randomBytes(300000);
    writeReal(rel, v1);
    await vs.startView();
    expect(sha(fs.readFileSync(vs.inView(rel)))).toBe(sha(v1));
    await waitFor(() => (vs!.view!.state()?.store?.fills ?? 0) >= 1, 20000, 50);
    // Mapped and read through the kernel's page cache, which keeps it for 600 s unless told.
    expect(sha(fs.readFileSync(vs.inView(rel)))).toBe(sha(v1));

    const inPlace = await rewriteInPlace(vs, rel, randomBytes(300000)); // same size: same inode, same size
    expect(inPlace).toBeGreaterThanOrEqual(0);
    expect(inPlace).toBeLessThanOrEqual(1050);

    const replaced = await replaceByRename(vs, rel, randomBytes(100000));
    expect(replaced).toBeGreaterThanOrEqual(0);
    expect(replaced).toBeLessThanOrEqual(1050);

    // A name looked up while missing is cached negative for 600 s; its creation is told.
    const added = 'lib/libnew.so.1';
    expect(fs.existsSync(vs.inView(added))).toBe(false);
    writeReal(added, Buffer.from('new'));
    const seen = await waitFor(() => fs.existsSync(vs!.inView(added)), 1500, 20);
    expect(seen).toBeGreaterThanOrEqual(0);
    expect(seen).toBeLessThanOrEqual(1050);
    expect(fs.readdirSync(vs.inView('lib'))).toContain('libnew.so.1');

    fs.unlinkSync(path.join(vs.paths.realTree, added));
    expect(await waitFor(() => !fs.existsSync(vs!.inView(added)), 1500, 20)).toBeGreaterThanOrEqual(0);
  });
});


/** The largest regular file directly under dir of the real tree (relative path), at most 256 MiB. */
function largestFile(realTree: string, dir: string): string {
  let best = '';
  let size = -1;
  for (const name of fs.readdirSync(path.join(realTree, dir))) {
    const st = fs.lstatSync(path.join(realTree, dir, name));
    if (st.isFile() && st.size > size && st.size < 256 << 20) {
      best = path.join(dir, name);
      size = st.size;
    }
  }
  return best;
}

/**
 * The protocol server without a mount: requests built byte by byte are handed to the
 * session's dispatcher and its replies read back from a file standing in for /dev/fuse.
 * Every request gets exactly one reply (none for FORGET, BATCH_FORGET, INTERRUPT), and
 * nothing it is sent makes it throw.
 */
describe('kernel session protocol, without a mount', () => {
  const E = os.constants.errno;
  const fileAttr: Attr = {
    mode: 0o100644, uid: 0, gid: 0, size: 12, dev: 1, ino: 77, nlink: 1, rdev: 0, blksize: 4096, blocks: 1,
    atime: new Date(1e12), mtime: new Date(1e12 + 123), ctime: new Date(1e12),
  };
  const dirAttr: Attr = { ...fileAttr, mode: 0o040755, ino: 2 };
  const names = Array.from({ length: 40 }, (_, i) => `entry-${i}-${'x'.repeat(i)}`);
  let opens = 0;
  /** What '/a' is now (a test renames another file over it), and the opens with the inode they expected. */
  let aAttr = fileAttr;
  let released = 0;
  const openedWith: Array<{ path: string; ino?: number }> = [];
  const handlers: ViewHandlers = {
    getattr: async (p) => {
      if (p === '/' || p === '/dir') return dirAttr;
      if (p === '/a') return aAttr;
      if (/^\/f\d+$/.test(p)) return { ...fileAttr, ino: 1000 + Number(p.slice(2)) };
      if (p === '/denied') throw Object.assign(new Error('no'), { code: 'EACCES' });
      throw Object.assign(new Error('none'), { code: 'ENOENT' });
    },
    readdir: async () => names,
    readlink: async () => 'target',
    open: async (p, _flags, expect) => {
      openedWith.push({ path: p, ino: expect?.ino });
      return ++opens;
    },
    read: async (_h, into, length, position) => {
      const data = Buffer.from('hello, world');
      return data.copy(into, 0, position, Math.min(data.length, position + length));
    },
    release: async () => {
      released++;
    },
    statfs: async () => ({ bsize: 4096, frsize: 4096, blocks: 10, bfree: 5, bavail: 5, files: 9, ffree: 3, favail: 3, fsid: 0, flag: 1, namemax: 255 }),
    access: async () => undefined,
    getxattr: async (_p, name) => (name === 'user.x' ? Buffer.from('val') : undefined),
    listxattr: async () => ['user.x', 'user.yy'],
  };
  let dir: string;
  let file: string;
  let read = 0;
  let session: KernelSession;
  let unique = 100n;
  // The dispatcher is private: the test drives it as the read loop would.
  const internals = () => session as unknown as { fd: number; dispatch(buf: Buffer, n: number): void };

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-proto-'));
    file = path.join(dir, 'dev-fuse');
    session = new KernelSession(handlers, { mountpoint: dir, attrTimeout: 2, entryTimeout: 3, negativeTimeout: 4, fsname: 'fscache' });
    internals().fd = fs.openSync(file, 'w+');
    read = 0;
    aAttr = fileAttr;
  });
  afterEach(() => {
    fs.closeSync(internals().fd);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** Sends one request; returns the replies written since the last call. */
  async function send(opcode: number, nodeid: number, body: Buffer = Buffer.alloc(0)): Promise<Array<{ error: number; unique: bigint; body: Buffer }>> {
    const u = unique++;
    const buf = Buffer.alloc(40 + body.length);
    buf.writeUInt32LE(buf.length, 0);
    buf.writeUInt32LE(opcode, 4);
    buf.writeBigUInt64LE(u, 8);
    buf.writeBigUInt64LE(BigInt(nodeid), 16);
    body.copy(buf, 40);
    internals().dispatch(buf, buf.length);
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    const all = fs.readFileSync(file);
    const out = [];
    while (read < all.length) {
      const len = all.readUInt32LE(read);
      out.push({ error: all.readInt32LE(read + 4), unique: all.readBigUInt64LE(read + 8), body: all.subarray(read + 16, read + len) });
      read += len;
    }
    for (const r of out) expect(r.unique).toBe(u);
    return out;
  }
  const name = (s: string) => Buffer.from(s + '\0');
  const u32s = (...xs: number[]) => {
    const b = Buffer.alloc(xs.length * 4);
    xs.forEach((x, i) => b.writeUInt32LE(x >>> 0, i * 4));
    return b;
  };
  const readIn = (offset: number, size: number, fh = 0) => {
    const b = Buffer.alloc(40);
    b.writeBigUInt64LE(BigInt(fh), 0);
    b.writeBigUInt64LE(BigInt(offset), 8);
    b.writeUInt32LE(size, 16);
    return b;
  };
  const init = () => send(Op.INIT, 0, Buffer.concat([u32s(7, 45, 131072, 0xffffffff, 0), Buffer.alloc(44)]));

  test('INIT grants what the kernel offers of what we want, at our minor', async () => {
    const [r] = await init();
    expect(r.error).toBe(0);
    expect([r.body.readUInt32LE(0), r.body.readUInt32LE(4)]).toEqual([7, 31]);
    const flags = r.body.readUInt32LE(12);
    for (const f of [InitFlag.NO_OPEN_SUPPORT, InitFlag.NO_OPENDIR_SUPPORT, InitFlag.CACHE_SYMLINKS, InitFlag.ASYNC_READ, InitFlag.MAX_PAGES]) {
      expect(flags & f).toBe(f);
    }
    expect(flags & InitFlag.DO_READDIRPLUS).toBe(0);
  });

  test('a kernel offering fewer flags gets only those; OPEN is then served with a handle', async () => {
    const [r] = await send(Op.INIT, 0, Buffer.concat([u32s(7, 26, 131072, InitFlag.ASYNC_READ, 0), Buffer.alloc(44)]));
    expect(r.body.readUInt32LE(4)).toBe(26);
    expect(r.body.readUInt32LE(12)).toBe(InitFlag.ASYNC_READ);
    const [e] = await send(Op.LOOKUP, 1, name('a'));
    const id = Number(e.body.readBigUInt64LE(0));
    const [o] = await send(Op.OPEN, id, u32s(0, 0));
    expect(o.error).toBe(0);
    const fh = Number(o.body.readBigUInt64LE(0));
    expect(fh).toBeGreaterThan(0);
    const [d] = await send(Op.READ, id, readIn(7, 100, fh));
    expect(d.body.toString()).toBe('world');
    expect(await send(Op.RELEASE, id, Buffer.concat([Buffer.alloc(8), u32s(0, 0, 0, 0)]))).toEqual([expect.objectContaining({ error: 0 })]);
  });

  test('LOOKUP: entries with the configured timeouts, a missing name as a cached negative entry, errors as errno', async () => {
    await init();
    const [e] = await send(Op.LOOKUP, 1, name('a'));
    expect(e.error).toBe(0);
    expect(Number(e.body.readBigUInt64LE(0))).toBeGreaterThan(1);
    expect([Number(e.body.readBigUInt64LE(16)), Number(e.body.readBigUInt64LE(24))]).toEqual([3, 2]);
    expect(Number(e.body.readBigUInt64LE(40))).toBe(77); // attr.ino
    expect(e.body.readUInt32LE(40 + 60)).toBe(0o100644); // attr.mode
    expect(e.body.readUInt32LE(40 + 52)).toBe(123e6); // mtime nanoseconds
    const [n] = await send(Op.LOOKUP, 1, name('missing'));
    expect([n.error, Number(n.body.readBigUInt64LE(0)), Number(n.body.readBigUInt64LE(16))]).toEqual([0, 0, 4]);
    expect((await send(Op.LOOKUP, 1, name('denied')))[0].error).toBe(-E.EACCES);
    expect((await send(Op.LOOKUP, 9999, name('a')))[0].error).toBe(-E.ESTALE);
  });

  test('FORGET and BATCH_FORGET give lookups back without a reply; the node goes at zero', async () => {
    await init();
    const id = Number((await send(Op.LOOKUP, 1, name('a')))[0].body.readBigUInt64LE(0));
    expect(Number((await send(Op.LOOKUP, 1, name('a')))[0].body.readBigUInt64LE(0))).toBe(id);
    const forget = (n: number) => {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(BigInt(n));
      return b;
    };
    expect(await send(Op.FORGET, id, forget(1))).toEqual([]);
    expect((await send(Op.GETATTR, id, Buffer.alloc(16)))[0].error).toBe(0);
    const batch = Buffer.alloc(8 + 16);
    batch.writeUInt32LE(1, 0);
    batch.writeBigUInt64LE(BigInt(id), 8);
    batch.writeBigUInt64LE(1n, 16);
    expect(await send(Op.BATCH_FORGET, 0, batch)).toEqual([]);
    expect((await send(Op.GETATTR, id, Buffer.alloc(16)))[0].error).toBe(-E.ESTALE);
    // A new lookup of the same path gets a new id: ids are never reused.
    expect(Number((await send(Op.LOOKUP, 1, name('a')))[0].body.readBigUInt64LE(0))).toBeGreaterThan(id);
  });

  test('READ by node opens the view handle once; READDIR continues at the offsets it gave', async () => {
    await init();
    const id = Number((await send(Op.LOOKUP, 1, name('a')))[0].body.readBigUInt64LE(0));
    const before = opens;
    expect((await send(Op.READ, id, readIn(0, 5)))[0].body.toString()).toBe('hello');
    expect((await send(Op.READ, id, readIn(7, 4096)))[0].body.toString()).toBe('world');
    expect(opens - before).toBe(1);
    const seen: string[] = [];
    let offset = 0;
    for (let i = 0; i < 100; i++) {
      const [r] = await send(Op.READDIR, 1, readIn(offset, 256));
      if (r.body.length === 0) break;
      for (let p = 0; p < r.body.length; ) {
        const len = r.body.readUInt32LE(p + 16);
        seen.push(r.body.toString('utf8', p + 24, p + 24 + len));
        offset = Number(r.body.readBigUInt64LE(p + 8));
        p += (24 + len + 7) & ~7;
      }
    }
    expect(seen).toEqual(['.', '..', ...names]);
  });

  test('a name renamed over: a new node for the new file; the old node keeps its handle, attributes and pages', async () => {
    await init();
    const old = Number((await send(Op.LOOKUP, 1, name('a')))[0].body.readBigUInt64LE(0));
    expect((await send(Op.READ, old, readIn(0, 5)))[0].body.toString()).toBe('hello');
    expect(openedWith[openedWith.length - 1]).toEqual({ path: '/a', ino: 77 });
    const opensBefore = opens;

    aAttr = { ...fileAttr, ino: 78, size: 99 };
    session.invalidate('/a');
    await new Promise((r) => setTimeout(r, 300)); // and its trailing repeat
    const notes: Array<{ code: number; node: bigint }> = [];
    const all = fs.readFileSync(file);
    for (; read < all.length; read += all.readUInt32LE(read)) notes.push({ code: all.readInt32LE(read + 4), node: all.readBigUInt64LE(read + 16) });
    // INVAL_ENTRY (3) of the name in the root; no INVAL_INODE (2) of the old node: its pages stay.
    expect(notes).toContainEqual({ code: 3, node: 1n });
    expect(notes.filter((n) => n.code === 2 && n.node === BigInt(old))).toEqual([]);

    const fresh = Number((await send(Op.LOOKUP, 1, name('a')))[0].body.readBigUInt64LE(0));
    expect(fresh).toBeGreaterThan(old);
    // attr_out: valid, valid_nsec, dummy, then the attributes starting with ino.
    expect((await send(Op.GETATTR, old, Buffer.alloc(16)))[0].body.readBigUInt64LE(16)).toBe(77n);
    expect((await send(Op.GETATTR, fresh, Buffer.alloc(16)))[0].body.readBigUInt64LE(16)).toBe(78n);
    // The old node reads through the handle it has; the new one opens its own, for inode 78.
    expect((await send(Op.READ, old, readIn(7, 5)))[0].body.toString()).toBe('world');
    expect(opens).toBe(opensBefore);
    await send(Op.READ, fresh, readIn(0, 5));
    expect(openedWith[openedWith.length - 1]).toEqual({ path: '/a', ino: 78 });
  });

  test('node handles are held until FORGET; beyond the descriptor budget the least recently read close', async () => {
    await init();
    (session as unknown as { handles: { budget: number } }).handles.budget = 10;
    const ids: number[] = [];
    const releasedBefore = released;
    for (let i = 0; i < 25; i++) {
      const id = Number((await send(Op.LOOKUP, 1, name(`f${i}`)))[0].body.readBigUInt64LE(0));
      await send(Op.READ, id, readIn(0, 5));
      ids.push(id);
    }
    await new Promise((r) => setImmediate(r));
    // 25 opened, at most 10 held: the oldest went first.
    expect(released - releasedBefore).toBeGreaterThanOrEqual(15);
    const opened = opens;
    await send(Op.READ, ids[24], readIn(0, 5)); // the most recent still has its handle
    expect(opens).toBe(opened);
    await send(Op.READ, ids[0], readIn(0, 5)); // the oldest opens again
    expect(opens).toBe(opened + 1);
    const forget = Buffer.alloc(8);
    forget.writeBigUInt64LE(1n);
    const before = released;
    await send(Op.FORGET, ids[24], forget);
    await new Promise((r) => setImmediate(r));
    expect(released - before).toBe(1);
  });

  test('xattrs: a size-0 probe gets the size, a short buffer ERANGE, a missing name ENODATA', async () => {
    await init();
    const id = Number((await send(Op.LOOKUP, 1, name('a')))[0].body.readBigUInt64LE(0));
    const get = (size: number, n: string) => send(Op.GETXATTR, id, Buffer.concat([u32s(size, 0), name(n)]));
    expect((await get(0, 'user.x'))[0].body.readUInt32LE(0)).toBe(3);
    expect((await get(1, 'user.x'))[0].error).toBe(-E.ERANGE);
    expect((await get(10, 'user.x'))[0].body.toString()).toBe('val');
    expect((await get(10, 'user.x'))[0].body.toString()).toBe('val'); // from the node's cache
    expect((await get(10, 'user.none'))[0].error).toBe(-E.ENODATA);
    expect((await send(Op.LISTXATTR, id, u32s(0, 0)))[0].body.readUInt32LE(0)).toBe('user.x\0user.yy\0'.length);
    expect((await send(Op.LISTXATTR, id, u32s(100, 0)))[0].body.toString()).toBe('user.x\0user.yy\0');
  });

  test('no-open answers, ioctl, write operations, unknown and malformed requests: one reply each, no throw', async () => {
    await init();
    expect((await send(Op.OPEN, 1, u32s(0, 0)))[0].error).toBe(-E.ENOSYS);
    expect((await send(Op.OPENDIR, 1, u32s(0, 0)))[0].error).toBe(-E.ENOSYS);
    expect((await send(Op.FLUSH, 1, Buffer.alloc(24)))[0].error).toBe(-E.ENOSYS);
    expect((await send(Op.IOCTL, 1, Buffer.alloc(32)))[0].error).toBe(-E.ENOTTY);
    for (const op of [Op.MKDIR, Op.WRITE, Op.SETATTR, Op.UNLINK, Op.CREATE, Op.SETXATTR, Op.RENAME2]) {
      expect((await send(op, 1, Buffer.alloc(8)))[0].error).toBe(-E.EROFS);
    }
    expect(await send(Op.INTERRUPT, 0, Buffer.alloc(8))).toEqual([]);
    expect((await send(99, 1))[0].error).toBe(-E.ENOSYS);
    expect((await send(Op.STATX, 1, Buffer.alloc(32)))[0].error).toBe(-E.ENOSYS);
    // Bodies too short for their opcode: an errno, not a crash.
    for (const op of [Op.READ, Op.GETXATTR, Op.LISTXATTR, Op.ACCESS, Op.READDIR]) {
      const replies = await send(op, 1);
      expect(replies).toHaveLength(1);
      expect(replies[0].error).toBeLessThan(0);
    }
    expect(await send(Op.FORGET, 1)).toEqual([]); // no body, no reply, no throw
    expect((await send(Op.INIT, 0, Buffer.alloc(4)))[0].error).toBe(-E.EIO);
    const [s] = await send(Op.STATFS, 1);
    expect([Number(s.body.readBigUInt64LE(0)), s.body.readUInt32LE(40)]).toEqual([10, 4096]);
    expect((await send(Op.READLINK, 1))[0].body.toString()).toBe('target');
    expect((await send(Op.DESTROY, 0))[0].error).toBe(0);
  });
});
