/**
 * The kernel session (fuse_session = kernel) over real mounts: what it negotiates,
 * bytes through it, real programs in a chroot, warm launches the kernel answers
 * alone (request counts from the view's state file), freshness through invalidation
 * notices with long cache timeouts, mmap, and stop while a process holds a mapping.
 */
import { ChildProcessWithoutNullStreams, spawn } from 'child_process';
import { createHash, randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { runInChroot } from '../cli/demo';
import { isMountPoint } from '../fs/preflight';
import { CLI_ENTRY, ViewProcess } from '../fs/view-process';
import { createViewSandbox, fuseAvailable, ViewSandbox, waitFor } from './helpers/view-sandbox';

const skip = fuseAvailable();
const maybe = skip ? describe.skip : describe;
if (skip) console.warn(`kernel session tests skipped: ${skip}`);

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
/** Long validity: what the kernel shows must then come from notifications, not from expiry. */
const LONG = 'fuse_session = kernel\nentry_timeout = 600\nattr_timeout = 600\nnegative_timeout = 600\naccess_flush_ms = 100\n';

const LAUNCHES: Array<[string, string[], RegExp]> = [
  ['git --version', ['/usr/bin/git', '--version'], /^git version /],
  ['perl -e', ['/usr/bin/perl', '-MPOSIX', '-e', 'print floor(7.9), "\\n"'], /^7\n$/],
  ['python3 imports', ['/usr/bin/python3', '-c', 'import json, zlib, sqlite3; print(zlib.crc32(b"x"))'], /^\d+\n$/],
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
    const now = `${st?.store?.fills}/${st?.watcher?.directories}`;
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
  afterEach(async () => {
    await vs?.dispose();
    vs = undefined;
  });

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

  test('git, perl and python3 run in the chroot; their warm relaunch sends no open, release, readlink or opendir', async () => {
    vs = createViewSandbox({ config: LONG });
    await vs.startView();
    for (const [label, argv, expected] of LAUNCHES) {
      for (let i = 0; i < 2; i++) {
        const r = await runInChroot(vs.sandbox, argv);
        expect({ label, code: r.code, stderr: r.stderr }).toEqual({ label, code: 0, stderr: '' });
        expect(r.stdout).toMatch(expected);
      }
    }
    // Let the copies land: a directory the watcher starts watching floods it with events
    // for every entry (chokidar), each one an invalidation. Then once more, warm.
    await settle(vs);
    for (const [, argv] of LAUNCHES) expect((await runInChroot(vs.sandbox, argv)).code).toBe(0);
    const before = await countsNow(vs);
    expect(before.open ?? 0).toBeLessThanOrEqual(1); // the one ENOSYS answer
    for (const [, argv] of LAUNCHES) expect((await runInChroot(vs.sandbox, argv)).code).toBe(0);
    const d = delta(before, await countsNow(vs));
    for (const op of ['open', 'release', 'readlink', 'opendir', 'releasedir', 'flush', 'lookup', 'read', 'readdir']) {
      expect({ op, n: d[op] ?? 0 }).toEqual({ op, n: 0 });
    }
    // What still reaches the view: security.capability at each exec and Python's TCGETS per file.
    expect(Object.keys(d).filter((k) => !['getxattr', 'ioctl', 'getattr'].includes(k))).toEqual([]);
  });

  test('on a kernel that offers fewer flags, OPEN and OPENDIR are served with handles and programs still run', async () => {
    vs = createViewSandbox({ config: 'fuse_session = kernel\naccess_flush_ms = 100\n' });
    // The view then asks the kernel only for the flags not named.
    vs.view = await startViewWithEnv(vs, { FSCACHE_SESSION_REFUSE: 'NO_OPEN_SUPPORT,NO_OPENDIR_SUPPORT,CACHE_SYMLINKS' });
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
  afterEach(async () => {
    await vs?.dispose();
    vs = undefined;
  });

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
    expect(await waitFor(() => (vs!.view!.state()?.store?.fills ?? 0) > 0, 20000, 100)).toBeGreaterThanOrEqual(0);
    for (const [rel, content] of files) expect(sha(fs.readFileSync(vs.inView(rel)))).toBe(sha(content));
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

    const v2 = randomBytes(300000); // same size, written in place: same inode, same size
    const fd = fs.openSync(path.join(vs.paths.realTree, rel), 'r+');
    fs.writeSync(fd, v2, 0, v2.length, 0);
    fs.closeSync(fd);
    const inPlace = await waitFor(() => sha(fs.readFileSync(vs!.inView(rel))) === sha(v2), 1500, 20);
    expect(inPlace).toBeGreaterThanOrEqual(0);
    expect(inPlace).toBeLessThanOrEqual(1050);

    const v3 = randomBytes(100000); // replaced by rename, as package managers do
    const tmp = path.join(vs.paths.realTree, 'lib', '.tmp-new');
    fs.writeFileSync(tmp, v3);
    fs.renameSync(tmp, path.join(vs.paths.realTree, rel));
    const replaced = await waitFor(() => sha(fs.readFileSync(vs!.inView(rel))) === sha(v3), 1500, 20);
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

/**
 * startViewProcess with extra environment for the view (jest's process.env does not
 * reach child processes): the same CLI, the same wait for the mount and the state file.
 */
async function startViewWithEnv(vs: ViewSandbox, env: Record<string, string>): Promise<ViewProcess> {
  const child = spawn(process.execPath, [CLI_ENTRY, '--root', vs.sandbox.root, 'mount'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, ...env },
  });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const view: ViewProcess = {
    child,
    mountpoint: vs.paths.viewMount,
    stateFile: vs.paths.viewState,
    log: () => stderr,
    state: () => {
      try {
        return JSON.parse(fs.readFileSync(vs.paths.viewState, 'utf8'));
      } catch {
        return undefined;
      }
    },
    stop: async (timeoutMs = 20000) => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
  const ms = await waitFor(() => isMountPoint(vs.paths.viewMount) && fs.existsSync(vs.paths.viewState), 15000, 50);
  if (ms < 0) {
    await view.stop(1000);
    throw new Error(`the view did not mount: ${stderr}`);
  }
  return view;
}

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
