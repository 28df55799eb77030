/**
 * The init systems' files, run for real: the systemd units checked by systemd-analyze and the
 * supervisor's readiness message caught on a NOTIFY_SOCKET; the OpenRC script run by Debian's
 * openrc package (openrc-run, supervise-daemon) and the LSB script run by dash and busybox,
 * both inside a whole root (chroot), fscache installed in the /usr it serves.
 */
import { execFileSync, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PACKAGE_ROOT } from '../core/package-root';
import { createOpsSandbox, OpsSandbox } from './helpers/ops-sandbox';
import { fuseAvailable, waitFor } from './helpers/view-sandbox';
import { resting } from './helpers/supervised';
import { createWholeRoot, RunResult, WholeRoot, wholeRootAvailable } from './helpers/whole-root';
import { afterEachDispose } from './helpers/cleanup';

const INIT = path.resolve(__dirname, '..', 'initscripts');
const GUARD = path.join(PACKAGE_ROOT, 'guard', 'fscache-guard');

const hasAnalyze = spawnSync('systemd-analyze', ['--version']).status === 0;
if (!hasAnalyze) console.warn('systemd unit checks skipped: systemd-analyze is missing');

/** The units with /usr/bin/fscache replaced by an existing program (verify checks that ExecStart exists). */
function unitsIn(dir: string): string[] {
  return fs.readdirSync(path.join(INIT, 'systemd')).map((unit) => {
    const file = path.join(dir, unit);
    fs.writeFileSync(file, fs.readFileSync(path.join(INIT, 'systemd', unit), 'utf8').replaceAll('/usr/bin/fscache', '/bin/true'));
    return file;
  });
}

(hasAnalyze ? describe : describe.skip)('systemd units', () => {
  test('pass systemd-analyze verify; the service is Type=notify, early, and keeps the view alive after stop', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-units-'));
    try {
      const r = spawnSync('systemd-analyze', ['verify', '--man=no', ...unitsIn(dir)], { encoding: 'utf8', timeout: 30000 });
      expect({ code: r.status, out: r.stdout + r.stderr }).toEqual({ code: 0, out: '' });
      const service = fs.readFileSync(path.join(INIT, 'systemd', 'fscache.service'), 'utf8');
      expect(service).toMatch(/^Type=notify$/m);
      expect(service).toMatch(/^DefaultDependencies=no$/m);
      expect(service).toMatch(/^Before=sysinit\.target/m);
      // The view must outlive the supervisor's stop (mixed would SIGKILL it after the main process exits).
      expect(service).toMatch(/^KillMode=process$/m);
      // No option that would put the service's mounts in a namespace of its own.
      expect(service).not.toMatch(/^(ProtectSystem|ProtectHome|PrivateTmp|PrivateMounts|ReadWritePaths|ProtectKernel\w+|ProtectControlGroups)=/m);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('systemd-analyze security: the service under 6, the sync unit under 3', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-units-'));
    try {
      unitsIn(dir);
      const score = (unit: string) => {
        const r = spawnSync('systemd-analyze', ['security', '--offline=yes', path.join(dir, unit)], { encoding: 'utf8', timeout: 30000 });
        const m = /Overall exposure level for \S+: ([\d.]+)/.exec(r.stdout + r.stderr);
        if (!m) throw new Error(`no score from systemd-analyze security: ${r.stdout}${r.stderr}`);
        return Number(m[1]);
      };
      const scores = { service: score('fscache.service'), sync: score('fscache-sync.service') };
      console.log(`systemd-analyze security: fscache.service ${scores.service}, fscache-sync.service ${scores.sync}`);
      expect(scores.service).toBeLessThan(6);
      expect(scores.sync).toBeLessThan(3);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** A NOTIFY_SOCKET like systemd's: a datagram socket with SO_PASSCRED; each message and its sender pid appended to a file. */
function notifyListener(dir: string): { socket: string; messages: () => Array<{ pid: number; text: string }>; close: () => void } {
  const socket = path.join(dir, 'notify');
  const log = path.join(dir, 'messages');
  const py = `
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind(sys.argv[1])
print("ready", flush=True)
while True:
    data, anc, flags, addr = s.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = [struct.unpack("iII", d)[0] for l, t, d in anc if t == socket.SCM_CREDENTIALS][0]
    with open(sys.argv[2], "a") as f:
        f.write(json.dumps({"pid": pid, "text": data.decode()}) + "\\n")
`;
  const child = spawn('/usr/bin/python3', ['-c', py, socket, log], { stdio: ['ignore', 'pipe', 'inherit'] });
  execFileSync('/bin/sh', ['-c', `for i in $(seq 100); do [ -S "${socket}" ] && exit 0; sleep 0.05; done; exit 1`]);
  return {
    socket,
    messages: () => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : '').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { pid: number; text: string }),
    close: () => child.kill('SIGKILL'),
  };
}

const noFuse = fuseAvailable();
(noFuse || !fs.existsSync(GUARD) ? describe.skip : describe)('readiness (Type=notify)', () => {
  let ops: OpsSandbox | undefined;
  let listener: ReturnType<typeof notifyListener> | undefined;
  let dir: string | undefined;
  afterEach(async () => {
    listener?.close();
    await ops?.dispose();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    ops = listener = dir = undefined;
  });

  test('the guard sends a message in its parent\'s name', () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-notify-'));
    listener = notifyListener(dir);
    execFileSync(GUARD, ['--notify', 'STATUS=hello'], { env: { NOTIFY_SOCKET: listener.socket }, timeout: 5000 });
    execFileSync('/bin/sh', ['-c', `for i in $(seq 100); do [ -s "${dir}/messages" ] && exit 0; sleep 0.05; done`]);
    expect(listener.messages()).toEqual([{ pid: process.pid, text: 'STATUS=hello' }]);
    // Without NOTIFY_SOCKET (not under systemd) it does nothing and succeeds.
    expect(spawnSync(GUARD, ['--notify', 'READY=1'], { env: {} }).status).toBe(0);
  });

  test('the supervisor says READY=1 once /usr is switched, STOPPING=1 on SIGTERM (at rest: from guard/rest.c, in the same pid)', async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-notify-'));
    listener = notifyListener(dir);
    ops = createOpsSandbox({ config: 'supervisor_rest_seconds = 1\n' });
    expect(ops.cli(['setup', '--yes']).code).toBe(0);
    fs.mkdirSync(path.join(ops.paths.realTree, 'bin'));
    fs.writeFileSync(path.join(ops.paths.realTree, 'bin', 'tool'), 'x');
    const sup = spawn(process.execPath, [path.join(PACKAGE_ROOT, 'dist', 'cli', 'main.js'), '--root', ops.root, 'start', '--foreground'],
      { env: { ...process.env, NOTIFY_SOCKET: listener.socket }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    sup.stderr!.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => sup.on('exit', (code) => resolve(code)));
    try {
      const deadline = Date.now() + 30000;
      let ready: { pid: number; text: string } | undefined;
      let linkAtReady = '';
      while (!ready && Date.now() < deadline) {
        ready = listener.messages().find((m) => m.text.startsWith('READY=1'));
        if (ready) linkAtReady = fs.readlinkSync(ops.paths.usrLink);
        else await new Promise((r) => setTimeout(r, 50));
      }
      expect({ ready: !!ready, stderr }).toMatchObject({ ready: true });
      expect(ready!.pid).toBe(sup.pid); // in the main process's name: NotifyAccess=main takes it
      expect(linkAtReady).not.toBe('usr.real');
      expect(ready!.text).toMatch(/^READY=1\nSTATUS=serving: view pid \d+$/);
      expect(await waitFor(() => resting(sup.pid!), 15000, 50)).toBeGreaterThanOrEqual(0);
    } finally {
      sup.kill('SIGTERM');
      expect(await exited).toBe(0);
    }
    expect(listener.messages().filter((m) => m.text === 'STOPPING=1').map((m) => m.pid)).toEqual([sup.pid]);
    expect(listener.messages().filter((m) => m.text.startsWith('READY=1'))).toHaveLength(1);
    expect(fs.readlinkSync(ops.paths.usrLink)).toBe('usr.real');
  });
});

const noRoot = wholeRootAvailable();
if (noRoot) console.warn(`init scripts in a whole root skipped: ${noRoot}`);

/**
 * Debian's packages, unpacked into the whole root (never installed on this machine: openrc
 * would change its init). Taken from .cache/debs, fetched there by `apt-get download` once.
 */
function debs(names: string[]): string[] | string {
  const dir = path.join(PACKAGE_ROOT, '.cache', 'debs');
  fs.mkdirSync(dir, { recursive: true });
  const find = () => names.map((n) => fs.readdirSync(dir).find((f) => f.startsWith(`${n}_`) && f.endsWith('.deb')));
  if (find().some((f) => !f)) {
    const r = spawnSync('apt-get', ['download', ...names], { cwd: dir, encoding: 'utf8', timeout: 120000 });
    if (find().some((f) => !f)) return `apt-get download ${names.join(' ')} failed: ${(r.stderr || r.error?.message || '').trim().split('\n').pop()}`;
  }
  return find().map((f) => path.join(dir, f!));
}

/** Unpacks a .deb into R; the root's /bin, /sbin and /lib links into /usr are kept (merged /usr). */
function unpack(root: string, deb: string): void {
  execFileSync('/bin/sh', ['-c', 'dpkg-deb --fsys-tarfile "$1" | tar -x --keep-directory-symlink -C "$2"', 'sh', deb, root], { timeout: 60000 });
}

function explain(what: string, r: RunResult): string {
  return `${what}: code ${r.code}${r.timedOut ? ' (timed out)' : ''}\n${r.stdout}${r.stderr}`;
}

function readLog(wr: WholeRoot): string {
  try {
    return fs.readFileSync(path.join(wr.root, 'run', 'fscache', 'fscache.log'), 'utf8');
  } catch {
    return '(no log)';
  }
}

/** The processes inside R that are fscache's service (not the view draining after a stop). */
function serviceProcesses(wr: WholeRoot): string[] {
  return wr.processesInside().map((pid) => {
    try {
      return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim();
    } catch {
      return '';
    }
  }).filter((cmd) => /supervise-daemon|start --foreground|fscache-guard/.test(cmd));
}

const openrcDebs = noRoot ? noRoot : debs(['openrc', 'librc1', 'libeinfo1']);
if (typeof openrcDebs === 'string' && !noRoot) console.warn(`OpenRC test skipped: ${openrcDebs}`);

(typeof openrcDebs === 'string' ? describe.skip : describe)('OpenRC: openrc-run and supervise-daemon in a whole root', () => {
  let wr: WholeRoot | undefined;
  afterEach(async () => {
    if (wr) await wr.run(['/sbin/openrc-run', '/etc/init.d/fscache', 'stop'], { timeoutMs: 60000 });
    await wr?.dispose();
    wr = undefined;
  });

  test('checkconfig, start (tracked, /usr switched), status at rest, stop; a failed start leaves nothing running', async () => {
    wr = createWholeRoot({ config: 'hook = off\n' });
    for (const deb of openrcDebs as string[]) unpack(wr.root, deb);
    fs.copyFileSync(path.join(INIT, 'openrc', 'fscache'), path.join(wr.root, 'etc', 'init.d', 'fscache'));
    fs.chmodSync(path.join(wr.root, 'etc', 'init.d', 'fscache'), 0o755);
    fs.mkdirSync(path.join(wr.root, 'etc', 'conf.d'), { recursive: true });
    // The conf.d as shipped, but the open files limit this test runner allows (a container's hard limit may be below 65536).
    fs.writeFileSync(path.join(wr.root, 'etc', 'conf.d', 'fscache'), fs.readFileSync(path.join(INIT, 'openrc', 'conf.d', 'fscache'), 'utf8') + 'rc_ulimit="-n $(ulimit -Hn)"\n');
    fs.symlinkSync('../run', path.join(wr.root, 'var', 'run')); // as on every installed system
    // What OpenRC's boot leaves: its state directory, and the runlevel it booted into.
    for (const d of ['daemons', 'exclusive', 'failed', 'hotplugged', 'inactive', 'options', 'scheduled', 'started', 'starting', 'stopping', 'tmp', 'wasinactive']) {
      fs.mkdirSync(path.join(wr.root, 'run', 'openrc', d), { recursive: true });
    }
    fs.writeFileSync(path.join(wr.root, 'run', 'openrc', 'softlevel'), 'default');
    // Gentoo's localmount (Debian's openrc has none): the file systems are already mounted here.
    fs.writeFileSync(path.join(wr.root, 'etc', 'init.d', 'localmount'), '#!/sbin/openrc-run\ndescription="local file systems (mounted)"\nstart() { return 0; }\n', { mode: 0o755 });
    fs.writeFileSync(path.join(wr.root, 'etc', 'insserv.conf'), '');
    const rc = (cmd: string) => wr!.run(['/sbin/openrc-run', '/etc/init.d/fscache', cmd], { timeoutMs: 90000 });
    const link = () => fs.readlinkSync(path.join(wr!.root, 'usr'));

    const check = await rc('checkconfig');
    expect(check.code).toBe(0);
    expect(check.stdout + check.stderr).toMatch(/config ok/);

    // A bad config: start refuses before anything runs.
    fs.writeFileSync(path.join(wr.root, 'etc', 'fscache.conf'), 'hook = off\nquota = lots\n');
    const refused = await rc('start');
    expect(refused.code).not.toBe(0);
    expect(refused.stdout + refused.stderr).toMatch(/bad value 'lots' for quota/);
    expect(serviceProcesses(wr)).toEqual([]);
    fs.writeFileSync(path.join(wr.root, 'etc', 'fscache.conf'), 'hook = off\nsupervisor_rest_seconds = 1\n');

    const started = await rc('start');
    expect({ code: started.code, out: started.code ? explain('start', started) + readLog(wr) : '' }).toEqual({ code: 0, out: '' });
    expect(link()).toBe('usr.view');
    expect(serviceProcesses(wr).some((c) => /supervise-daemon fscache/.test(c))).toBe(true);
    expect((await rc('status')).code).toBe(0);
    expect((await wr.run(['/usr/bin/git', '--version'], { timeoutMs: 30000 })).stdout).toMatch(/^git version/);
    const log = fs.readFileSync(path.join(wr.root, 'run', 'fscache', 'fscache.log'), 'utf8');
    expect(log).toMatch(/serving: view pid/);
    // The supervisor at rest (guard/rest.c in supervise-daemon's child): tracked, running, stopped alike.
    const rested = await waitFor(() => serviceProcesses(wr!).some((c) => / --rest /.test(c)), 15000, 100);
    expect({ rested: rested >= 0, log: rested >= 0 ? '' : readLog(wr) }).toEqual({ rested: true, log: '' });
    expect((await rc('status')).code).toBe(0);
    expect((await wr.run(['/usr/bin/git', '--version'], { timeoutMs: 30000 })).stdout).toMatch(/^git version/);

    const stopped = await rc('stop');
    expect({ code: stopped.code }).toEqual({ code: 0 });
    expect(link()).toBe('usr.real');
    expect(serviceProcesses(wr)).toEqual([]);
    expect((await rc('status')).code).toBe(3); // stopped

    // The view cannot start (something fscache did not put in its mount point): start fails,
    // the service is stopped again, nothing keeps retrying, /usr stays on the real tree.
    fs.writeFileSync(path.join(wr.root, 'usr.view', 'intruder'), 'x');
    const failed = await rc('start');
    expect(failed.code).not.toBe(0);
    expect(failed.stdout + failed.stderr).toMatch(/the view is not serving/);
    expect(link()).toBe('usr.real');
    await new Promise((r) => setTimeout(r, 3000)); // a retry would have come by now
    expect(serviceProcesses(wr)).toEqual([]);
    expect((await rc('status')).code).toBe(3);

    fs.rmSync(path.join(wr.root, 'usr.view', 'intruder'));
    const again = await rc('start');
    expect({ code: again.code, out: again.code ? explain('start', again) : '' }).toEqual({ code: 0, out: '' });
    expect(link()).toBe('usr.view');
    expect((await rc('stop')).code).toBe(0);
    expect(link()).toBe('usr.real');
  });
});

const busybox = noRoot ? noRoot : debs(['busybox-static']);
(noRoot ? describe.skip : describe)('LSB script (sysvinit, busybox init) in a whole root', () => {
  let wr: WholeRoot | undefined;
  afterEachDispose(() => wr, () => (wr = undefined));

  const shells: Array<[string, string[]]> = [['dash', ['/bin/sh']]];
  if (typeof busybox !== 'string') shells.push(['busybox ash', ['/bin/busybox', 'sh']]);
  else console.warn(`LSB script under busybox skipped: ${busybox}`);

  test.each(shells)('start, status, restart, stop under %s; a failed start leaves nothing running', async (_name, shell) => {
    wr = createWholeRoot({ config: 'hook = off\n' });
    if (typeof busybox !== 'string') unpack(wr.root, busybox[0]);
    fs.mkdirSync(path.join(wr.root, 'etc', 'init.d'), { recursive: true });
    fs.copyFileSync(path.join(INIT, 'sysvinit', 'fscache'), path.join(wr.root, 'etc', 'init.d', 'fscache'));
    const script = (cmd: string) => wr!.run([...shell, '/etc/init.d/fscache', cmd], { timeoutMs: 90000 });
    const link = () => fs.readlinkSync(path.join(wr!.root, 'usr'));

    expect((await script('status')).code).toBe(3);
    const started = await script('start');
    expect({ code: started.code, out: started.code ? explain('start', started) : '' }).toEqual({ code: 0, out: '' });
    expect(link()).toBe('usr.view');
    const status = await script('status');
    expect({ code: status.code, out: status.stdout }).toEqual({ code: 0, out: 'fscache is running\n' });
    expect((await script('restart')).code).toBe(0);
    expect(link()).toBe('usr.view');
    expect((await script('stop')).code).toBe(0);
    expect(link()).toBe('usr.real');
    expect(serviceProcesses(wr)).toEqual([]);
    expect((await script('status')).code).toBe(3);

    fs.writeFileSync(path.join(wr.root, 'usr.view', 'intruder'), 'x');
    const failed = await script('start');
    expect(failed.code).toBe(1);
    expect(link()).toBe('usr.real');
    expect(serviceProcesses(wr)).toEqual([]);
    expect((await script('bogus')).code).toBe(3);
  });
});

(noFuse ? describe.skip : describe)('fscache config --check', () => {
  let ops: OpsSandbox | undefined;
  afterEachDispose(() => ops, () => (ops = undefined));

  test('names what start would refuse, changes nothing; --show prints every effective value', () => {
    ops = createOpsSandbox({ config: 'quota = 2G\n' });
    const before = ops.cli(['config', '--check']);
    expect(before.code).toBe(3); // R/usr is still a directory
    expect(before.stderr).toMatch(/is a directory, not fscache's link/);
    expect(fs.lstatSync(ops.paths.usrLink).isDirectory()).toBe(true);
    expect(ops.cli(['setup', '--yes']).code).toBe(0);
    const ok = ops.cli(['config', '--check', '--show']);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/^config ok: .*fscache\.conf, mode view\n/);
    expect(ok.stdout).toMatch(/^quota = 2147483648$/m);
    expect(ok.stdout).toMatch(/^fill = \*\.so, \*\.so\.\*, bin\/\*/m);
    fs.writeFileSync(path.join(ops.root, 'etc', 'fscache.conf'), 'mode = fast\n');
    const bad = ops.cli(['config', '--check']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/fscache\.conf:1: bad value 'fast' for mode: allowed: view, mirror/);
    fs.writeFileSync(path.join(ops.root, 'etc', 'fscache.conf'), 'quota = 2G\n');
    fs.chmodSync(path.join(ops.root, 'etc', 'fscache.conf'), 0o666);
    expect(ops.cli(['config', '--check'])).toMatchObject({ code: 3, stderr: expect.stringMatching(/writable by others/) });
  });
});
