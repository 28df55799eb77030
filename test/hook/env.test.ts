/** enableHook/disableHook (LD_AUDIT through the init systems' environment, all under R) and startDaemon/stopDaemon. */
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { defaultConfig } from '../../core/config';
import { derivePaths, Paths } from '../../core/paths';
import { daemonPid, startDaemon, stopDaemon } from '../../loader-hook/control';
import { parseRequest } from '../../loader-hook/daemon';
import { readRefusals } from '../../loader-hook/refusals';
import { BUILT_AUDITOR, disableHook, editEnvironment, enableHook, installedAuditor } from '../../loader-hook/env';
import { auditorUse } from '../../loader-hook/active';
import { spawn } from 'child_process';

let root: string;
let paths: Paths;
beforeEach(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-env-'));
  paths = derivePaths(root, defaultConfig());
});
afterEach(async () => {
  await stopDaemon(paths);
  fs.rmSync(root, { recursive: true, force: true });
});

const read = (rel: string) => fs.readFileSync(path.join(root, rel), 'utf8');

test('the auditor is built (npm run build / make -C loader-hook)', () => {
  expect(fs.existsSync(BUILT_AUDITOR)).toBe(true);
});

test('enable is idempotent and keeps other lines; disable restores the file exactly', () => {
  fs.mkdirSync(path.join(root, 'etc', 'env.d'), { recursive: true });
  const original = 'PATH="/usr/local/bin:/usr/bin:/bin"\nLANG=C.UTF-8\n';
  fs.writeFileSync(path.join(root, 'etc', 'environment'), original);
  enableHook(paths);
  enableHook(paths);
  const { file, ldAudit } = installedAuditor(paths);
  // No real tree in this root: the copy goes to the root filesystem, never to flash or R/run.
  expect(ldAudit).toBe('/etc/fscache/fscache-audit.so');
  const st = fs.statSync(file);
  expect([st.uid, st.mode & 0o022]).toEqual([0, 0]);
  const env = read('etc/environment');
  expect(env.startsWith(original)).toBe(true);
  expect(env.match(/^LD_AUDIT=/gm)).toHaveLength(1);
  expect(env).toContain(`LD_AUDIT=${ldAudit}\n`);
  expect(read('etc/systemd/system.conf.d/fscache.conf')).toContain(`DefaultEnvironment=LD_AUDIT=${ldAudit}`);
  expect(read('etc/env.d/99fscache')).toContain(`LD_AUDIT="${ldAudit}"`);
  disableHook(paths);
  disableHook(paths);
  expect(read('etc/environment')).toBe(original);
  expect(fs.existsSync(path.join(root, 'etc/systemd/system.conf.d/fscache.conf'))).toBe(false);
  expect(fs.existsSync(path.join(root, 'etc/env.d/99fscache'))).toBe(false);
});

test('an existing LD_AUDIT list is extended and shrunk by our entry only; no env.d without Gentoo', () => {
  fs.mkdirSync(path.join(root, 'etc'), { recursive: true });
  fs.writeFileSync(path.join(root, 'etc', 'environment'), 'LD_AUDIT="/opt/other.so"\n');
  enableHook(paths);
  expect(read('etc/environment')).toBe('LD_AUDIT="/opt/other.so:/etc/fscache/fscache-audit.so"\n');
  expect(fs.existsSync(path.join(root, 'etc/env.d'))).toBe(false);
  disableHook(paths);
  expect(read('etc/environment')).toBe('LD_AUDIT="/opt/other.so"\n');
  expect(editEnvironment('', '/x.so', false)).toBe('');
});

test('an older version\'s LD_AUDIT entry (an auditor on flash) is replaced by enable and removed by disable', () => {
  fs.mkdirSync(path.join(root, 'etc'), { recursive: true });
  fs.writeFileSync(path.join(root, 'etc', 'environment'), 'LANG=C\n# fscache: the loader hook (fscache stop removes it)\nLD_AUDIT=/fscache/hook/fscache-audit.so\n');
  enableHook(paths);
  expect(read('etc/environment')).toBe(`LANG=C\n# fscache: the loader hook (fscache stop removes it)\nLD_AUDIT=${installedAuditor(paths).ldAudit}\n`);
  fs.writeFileSync(path.join(root, 'etc', 'environment'), 'LANG=C\nLD_AUDIT=/fscache/hook/fscache-audit.so\n');
  disableHook(paths);
  expect(read('etc/environment')).toBe('LANG=C\n');
});

test('a package installed in R names its own auditor through R/usr, also when found through the view; nothing is copied', () => {
  const inTree = path.join(paths.realTree, 'lib', 'fscache', 'loader-hook', 'fscache-audit.so');
  fs.mkdirSync(path.dirname(inTree), { recursive: true });
  fs.copyFileSync(BUILT_AUDITOR, inTree);
  fs.symlinkSync(path.relative(root, paths.viewMount), paths.usrLink);
  fs.mkdirSync(paths.viewMount, { recursive: true });
  const want = { file: inTree, ldAudit: '/usr/lib/fscache/loader-hook/fscache-audit.so', copy: false };
  // However the running package found itself: through the real tree, the link, or the view (never entered).
  for (const built of [inTree, path.join(paths.usrLink, 'lib/fscache/loader-hook/fscache-audit.so'), path.join(paths.viewMount, 'lib/fscache/loader-hook/fscache-audit.so')]) {
    expect(installedAuditor(paths, built)).toEqual(want);
  }
  fs.mkdirSync(path.join(root, 'etc'));
  fs.writeFileSync(path.join(root, 'etc', 'environment'), 'LD_AUDIT=/etc/fscache/fscache-audit.so\n');
  enableHook(paths, inTree);
  expect(read('etc/environment')).toBe(`# fscache: the loader hook (fscache stop removes it)\nLD_AUDIT=${want.ldAudit}\n`);
  expect(fs.existsSync(path.join(root, 'etc', 'fscache'))).toBe(false);
  disableHook(paths, inTree);
  expect(read('etc/environment')).toBe('');
});

test('requests: only well-formed lines with an absolute path are accepted', () => {
  expect(parseRequest('Q 1 2 3 4 /lib/libz.so.1')).toEqual({ dev: 1n, ino: 2n, size: 3n, mtimeNs: 4n, path: '/lib/libz.so.1' });
  for (const bad of ['', 'Q 1 2 3 /x', 'Q 1 2 3 4 lib/x', 'Q -1 2 3 4 /x', 'Q 1 2 3 4 /x\0y', `Q 1 2 3 4 /${'a'.repeat(5000)}`, 'GET / HTTP/1.0']) {
    expect(parseRequest(bad)).toBeUndefined();
  }
});

test('a flood of made-up requests leaves a bounded refusal record, and the daemon answers on', async () => {
  await startDaemon(paths);
  const ask = (line: string) => new Promise<string>((resolve) => {
    const c = net.connect(path.join(paths.runDir, 'hook.sock'));
    let got = '';
    c.on('data', (d) => (got += d));
    c.on('error', () => resolve(got));
    c.on('close', () => resolve(got));
    c.write(line); // no half-close: the hook, too, keeps its side open for the answer
  });
  for (let i = 0; i < 600; i += 50) {
    const answers = await Promise.all(Array.from({ length: 50 }, (_x, k) => ask(`Q ${i + k} 1 1 1 /nope/${i + k}.so\n`)));
    expect([...new Set(answers)]).toEqual(['PASS not eligible\n']);
  }
  await stopDaemon(paths); // flushes the record
  const list = readRefusals(path.join(paths.runDir, 'hook-refusals.json'));
  expect(list).toHaveLength(256);
  expect(list[0]).toMatchObject({ library: path.join(root, 'nope', '599.so'), reason: 'does not resolve (ENOENT)', count: 1 });
});

test('startDaemon and stopDaemon: idempotent, pid file, socket; the daemon keeps its log under a megabyte', async () => {
  // A log left large (by a daemon before this one): the new daemon rotates it at start.
  fs.mkdirSync(paths.runDir, { recursive: true });
  const log = path.join(paths.runDir, 'hook-daemon.log');
  fs.writeFileSync(log, 'x'.repeat(2 << 20));
  const pid = await startDaemon(paths);
  expect(await startDaemon(paths)).toBe(pid);
  expect(daemonPid(paths)).toBe(pid);
  // Its Node runs with the randomizer's flags (one V8 worker fewer than the cores, at most 4).
  const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  const flag = argv.indexOf(`--v8-pool-size=${Math.min(4, Math.max(1, os.availableParallelism() - 1))}`);
  expect(flag).toBeGreaterThan(0);
  expect(flag).toBeLessThan(argv.findIndex((a) => a.endsWith('main.js'))); // a Node option, not the CLI's
  expect(fs.existsSync(path.join(paths.runDir, 'hook.sock'))).toBe(true);
  expect(read('run/fscache/epoch')).toMatch(/^1 original 3000 fscache\/images lib:lib64:usr\/lib:usr\/lib64:usr\/local\/lib usr.real usr.view\n$/);
  expect(fs.statSync(`${log}.1`).size).toBeGreaterThanOrEqual(2 << 20);
  expect(fs.statSync(log).size).toBeLessThan(1 << 20);
  await stopDaemon(paths);
  await stopDaemon(paths);
  expect(daemonPid(paths)).toBeUndefined();
  expect(fs.existsSync(`/proc/${pid}`)).toBe(false);
});

test('Gentoo: env-update runs (by path in the root, for that root) when env.d changed, and enable/disable say what took effect', () => {
  fs.mkdirSync(path.join(root, 'etc', 'env.d'), { recursive: true });
  // No env-update anywhere (this is not Gentoo's host): said, not silently skipped.
  let notes = enableHook(paths);
  expect(notes[0]).toMatch(/^LD_AUDIT=\S+ for new logins .*running processes and services keep their environment until restarted$/);
  expect(notes[1]).toMatch(/etc\/env\.d\/99fscache changed, but no env-update was found: run `env-update/);
  disableHook(paths);
  // The root's own env-update (a stand-in recording what it was run for), found in R/sbin.
  fs.mkdirSync(path.join(root, 'sbin'));
  fs.writeFileSync(path.join(root, 'sbin', 'env-update'), '#!/bin/sh\ncat "$ROOT/etc/env.d/99fscache" > "$ROOT/etc/profile.env"\n', { mode: 0o755 });
  notes = enableHook(paths);
  expect(notes[1]).toBe('env-update ran: LD_AUDIT is in /etc/profile.env for new shells');
  expect(read('etc/profile.env')).toContain(`LD_AUDIT="${installedAuditor(paths).ldAudit}"`);
  // Unchanged env.d: nothing to update.
  expect(enableHook(paths)).toHaveLength(1);
  fs.writeFileSync(path.join(root, 'sbin', 'env-update'), '#!/bin/sh\necho "!!! broken profile" >&2\nexit 1\n', { mode: 0o755 });
  notes = disableHook(paths);
  expect(notes).toEqual([expect.stringMatching(/^LD_AUDIT removed/), 'env-update failed (exit 1: !!! broken profile): run it by hand']);
});

test('what is active: processes that have an auditor under R mapped are counted, others not', async () => {
  const copy = path.join(root, 'etc', 'fscache', 'fscache-audit.so');
  fs.mkdirSync(path.dirname(copy), { recursive: true });
  fs.copyFileSync(BUILT_AUDITOR, copy);
  expect(auditorUse(paths).processes).toBe(0);
  // The auditor outside R (the build's own) does not count for this root.
  const outside = spawn('/usr/bin/sleep', ['20'], { env: { LD_AUDIT: BUILT_AUDITOR } });
  const inside = [spawn('/usr/bin/sleep', ['20'], { env: { LD_AUDIT: copy } }), spawn('/usr/bin/sleep', ['20'], { env: { LD_AUDIT: copy } })];
  try {
    await new Promise((r) => setTimeout(r, 500));
    expect(auditorUse(paths).processes).toBe(2); // (pid 1 of this machine's sandbox is unreadable even to root)
  } finally {
    for (const c of [outside, ...inside]) c.kill('SIGKILL');
  }
});
