/**
 * The hook inside a chroot of R, as DESIGN.md intends (R seen as /): the standard auditor (root /),
 * libraries found by bare name through R's own ld.so.cache, so the hook resolves them at
 * LA_SER_ORIG and l_name (dl_iterate_phdr, gdb, dladdr) is the image; the daemon runs outside the
 * chroot with --root R and gets paths relative to R.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { announceSkip, REPO } from '../elf/libs';
import { currentEpoch, FIX, imageFor, installLib, Libs, libs, Sandbox, startDaemon, stopDaemon, writeConf } from './sandbox';

const L = libs();
const run = 'skip' in L ? describe.skip : describe;
if ('skip' in L) announceSkip('loader hook chroot tests', L.skip);

run('loader hook in a chroot of R', () => {
  const l = L as Libs;
  let sb: Sandbox;
  let proc: string;
  const libdir = 'usr/lib/x86_64-linux-gnu';

  beforeAll(() => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-chroot-'));
    fs.chmodSync(root, 0o755);
    for (const d of ['lib/x86_64-linux-gnu', 'lib64', libdir, 'etc', 'proc']) fs.mkdirSync(path.join(root, d), { recursive: true, mode: 0o755 });
    for (const f of [l.zlib, l.sqlite]) installLib(f, path.join(root, libdir, path.basename(f)));
    const consumer = path.join(root, 'consumer');
    execFileSync('gcc', ['-O2', `-I${l.zlibInclude}`, `-I${l.sqliteInclude}`, path.join(FIX, 'consumer.c'), '-o', consumer,
      `-L${path.join(root, libdir)}`, '-l:libsqlite3.so.0', '-l:libz.so.1', '-ldl']);
    // The host's C library, at the paths the loader and R's cache will use.
    const ldd = execFileSync('ldd', [consumer], { env: { LD_LIBRARY_PATH: path.join(root, libdir) } }).toString();
    for (const m of ldd.matchAll(/(\/\S+) \(0x/g)) {
      const host = m[1];
      if (host.startsWith(root)) continue;
      const dest = host.includes('ld-linux') ? path.join(root, 'lib64', path.basename(host)) : path.join(root, 'lib/x86_64-linux-gnu', path.basename(host));
      fs.copyFileSync(fs.realpathSync(host), dest);
      fs.chmodSync(dest, 0o755);
    }
    fs.writeFileSync(path.join(root, 'etc', 'ld.so.conf'), '');
    execFileSync('ldconfig', ['-r', root]);
    fs.copyFileSync(path.join(REPO, 'loader-hook', 'fscache-audit.so'), path.join(root, 'audit.so'));
    proc = path.join(root, 'proc');
    execFileSync('mount', ['-t', 'proc', 'proc', proc]);
    sb = { root, lib: path.join(root, libdir), auditor: '/audit.so', consumer: '/consumer', conf: path.join(root, 'etc', 'fscache.conf') };
    writeConf(sb, { library_dirs: 'usr/lib' });
  });

  afterAll(async () => {
    if (!sb) return;
    await stopDaemon(sb, 'SIGKILL');
    spawnSync('umount', [proc]);
    fs.rmSync(sb.root, { recursive: true, force: true });
  });

  const inChroot = (env: Record<string, string> = {}) => {
    const r = spawnSync('/usr/sbin/chroot', [sb.root, '/consumer'], { env: { PATH: '/usr/bin:/bin', LD_AUDIT: '/audit.so', ...env }, encoding: 'utf8', timeout: 120_000 });
    return { status: r.status, out: r.stdout + r.stderr };
  };

  test('bare names resolved through ld.so.cache are redirected at LA_SER_ORIG: l_name is the image', async () => {
    await startDaemon(sb);
    const r = inChroot();
    expect(r.status).toBe(0);
    expect(r.out).toMatch(/^ok 200 /);
    const e = currentEpoch(sb);
    for (const lib of ['libz.so.1', 'libsqlite3.so.0']) {
      const img = '/' + path.relative(sb.root, imageFor(sb, path.join(sb.lib, lib), e));
      expect(r.out).toContain(`lib ${img}\n`); // l_name: what gdb and dladdr use
      expect(r.out).toContain(`map ${img} `);
    }
  });

  test('gdb attached to a process names the randomized functions at their real addresses', async () => {
    const { spawn } = await import('child_process');
    const c = spawn('/usr/sbin/chroot', [sb.root, '/consumer', '20000'], { env: { PATH: '/usr/bin:/bin', LD_AUDIT: '/audit.so' }, stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    await new Promise<void>((resolve) => c.stdout!.on('data', (d) => { out += d; if (out.includes('map /audit.so')) resolve(); }));
    try {
      const g = spawnSync('gdb', ['-nx', '-batch', '-ex', `set sysroot ${sb.root}`, '-p', String(c.pid),
        '-ex', 'info symbol (void*)sqlite3_open', '-ex', 'info symbol (void*)deflate', '-ex', 'p (void*)sqlite3_open', '-ex', 'p (void*)deflate'], { encoding: 'utf8', timeout: 120_000 });
      for (const fn of ['sqlite3_open', 'deflate']) {
        const real = new RegExp(`sym ${fn} (0x[0-9a-f]+)`).exec(out)![1];
        expect(g.stdout).toMatch(new RegExp(`\\(void \\*\\) ${real} <${fn}>`));
        expect(g.stdout).toContain(`${fn} in section .text of ${sb.root}/fscache/images/`);
      }
    } finally {
      c.kill('SIGKILL');
    }
  });

  test('with LD_LIBRARY_PATH the hook does not guess: the later stage maps the image, l_name stays the original', async () => {
    const r = inChroot({ LD_LIBRARY_PATH: `/${libdir}` });
    expect(r.status).toBe(0);
    const e = currentEpoch(sb);
    const img = '/' + path.relative(sb.root, imageFor(sb, path.join(sb.lib, 'libz.so.1'), e));
    expect(r.out).toContain(`lib /${libdir}/libz.so.1\n`);
    expect(r.out).toContain(`map ${img} `);
  });
});
