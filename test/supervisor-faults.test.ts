/**
 * The supervisor against the faults a real machine meets: a hung view (SIGSTOP), an
 * aborted FUSE connection, a supervisor killed with -9 (then its view killed, or its view
 * hung), a pause, a view run by hand, a view draining after stop; status telling each of
 * them, the same for root and non-root; fusectl mounted when missing; node and the CLI
 * mapped to the real tree. Every call is bounded; cleanup aborts any FUSE connection left
 * below the root.
 */
import { ChildProcess, execFile, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { runInChroot } from '../cli/demo';
import { defaultConfig } from '../core/config';
import { fuseMountAt } from '../fs/fuse/fusectl';
import { linkTargetPath, switchLink } from '../fs/switch/link';
import { derivePaths } from '../core/paths';
import { inRealTree } from '../fs/service/self-command';
import { processAlive } from '../fs/service/stale';
import { pauseFile } from '../fs/switch/pause';
import { readSupervisorRecord, readSupervisorState } from '../fs/service/supervisor';
import { CLI_ENTRY } from '../fs/service/view-process';
import { createOpsSandbox, OpsSandbox } from './helpers/ops-sandbox';
import { backOnRealAfter, disposeAfterFaults, linkState, viewPid } from './helpers/supervised';
import { fuseAvailable, waitFor } from './helpers/view-sandbox';

const skip = fuseAvailable();
const maybe = skip ? describe.skip : describe;
if (skip) console.warn(`supervisor fault tests skipped: ${skip}`);

jest.setTimeout(120000);

// A killed process whose parent is gone stays a zombie until init reaps it: processAlive calls that dead.
const alive = processAlive;

type Status = { code: number | null; report: { health: string; state: string; problems: string[]; supervisor: { restarts: number; lastFailure: { kind: string; reason: string } | null } | null } };

function statusArgv(ops: OpsSandbox, asNobody: boolean): string[] {
  const argv = [process.execPath, CLI_ENTRY, '--root', ops.root, 'status', '--json'];
  return asNobody ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', ...argv] : argv;
}

function status(ops: OpsSandbox, asNobody = false): Status {
  const cmd = statusArgv(ops, asNobody);
  const r = spawnSync(cmd[0], cmd.slice(1), { encoding: 'utf8', timeout: 20000 });
  return { code: r.status, report: JSON.parse(r.stdout) };
}

/** Polls status (asynchronously: the test keeps timing the link meanwhile) until it names `state`. */
async function statusNames(ops: OpsSandbox, state: string, timeoutMs: number): Promise<Status | undefined> {
  const t0 = Date.now();
  const [cmd, ...args] = statusArgv(ops, false);
  while (Date.now() - t0 < timeoutMs) {
    const s = await new Promise<Status>((resolve) =>
      execFile(cmd, args, { encoding: 'utf8', timeout: 20000 }, (err, stdout) => resolve({ code: err ? Number(err.code) : 0, report: JSON.parse(stdout) })),
    );
    if (s.report.state === state) return s;
    await new Promise((r) => setTimeout(r, 100));
  }
  return undefined;
}

/** A launch that must reach the view's process: a lookup of a name never looked up before. */
function freshLookup(ops: OpsSandbox): Promise<{ ms: number; code: number | null }> {
  const [cmd, args] = ops.sandbox.chrootArgs(['/usr/bin/sh', '-c', `test -e /usr/lib/fscache-fresh-${process.hrtime.bigint()}; echo done`]);
  const t0 = Date.now();
  return new Promise((resolve) =>
    execFile(cmd, args, { timeout: 30000 }, (err) => resolve({ ms: Date.now() - t0, code: err ? (typeof err.code === 'number' ? err.code : -1) : 0 })),
  );
}

function started(ops: OpsSandbox): void {
  expect(ops.cli(['setup', '--yes']).code).toBe(0);
  ops.bindHostUsr();
  expect(ops.cli(['start'])).toMatchObject({ code: 0 });
  expect(linkState(ops)).toBe('view');
}

maybe('supervisor faults', () => {
  let ops: OpsSandbox | undefined;
  const stopped: number[] = [];
  afterEach(async () => {
    await disposeAfterFaults(ops, stopped);
    ops = undefined;
  });

  test('hung view (SIGSTOP): the link goes back, a launch caught in the hang ends, later launches run, status names the hang', async () => {
    ops = createOpsSandbox();
    started(ops);
    const pid = viewPid(ops);
    // Warm up what sh needs, so that the launch below is caught on its own fresh lookup.
    expect((await freshLookup(ops)).code).toBe(0);

    stopped.push(pid);
    const stoppedAt = Date.now();
    process.kill(pid, 'SIGSTOP');
    const caught = freshLookup(ops);
    const seenHung = statusNames(ops, 'hung', 8000);
    const flipMs = await backOnRealAfter(ops, stoppedAt, 5000);
    expect(flipMs).toBeGreaterThanOrEqual(0);
    // At most one probe interval (1 s) plus the probe deadline (2 s), and timers' slack on a shared machine.
    expect(flipMs).toBeLessThanOrEqual(4500);
    const hung = await caught;
    expect(hung.ms).toBeLessThanOrEqual(10000);
    expect(await seenHung).toBeDefined();

    await new Promise((r) => setTimeout(r, Math.max(0, stoppedAt + 5000 - Date.now())));
    const later = await runInChroot(ops.sandbox, ['/usr/bin/git', '--version']);
    expect(later).toMatchObject({ code: 0, stdout: expect.stringMatching(/^git version/) });
    expect(later.ms).toBeLessThan(5000);
    expect(alive(pid)).toBe(false); // killed (SIGKILL reaches a stopped process)
    console.log(`hung view: link back on the real tree ${flipMs} ms after SIGSTOP; the caught launch ended after ${hung.ms} ms (exit ${hung.code})`);

    // The supervisor restarts the view and switches back to it.
    expect(await waitFor(() => readSupervisorState(ops!.paths)?.state === 'serving' && linkState(ops!) === 'view', 15000, 50)).toBeGreaterThanOrEqual(0);
    const after = status(ops);
    expect(after.report.supervisor?.lastFailure).toMatchObject({ kind: 'hang' });
    expect(await waitFor(() => status(ops!).report.state === 'healthy', 5000, 200)).toBeGreaterThanOrEqual(0);
    expect((await freshLookup(ops)).code).toBe(0);
  });

  test('a deadlocked handler (the view waits on a real tree that stopped answering): the link goes back, the caught launch ends, service resumes', async () => {
    // The real tree is itself a FUSE mount (bindfs over this machine's /usr) that the test stops:
    // the view's process runs, but its handlers wait for ever. watch = off, so that every lookup
    // asks the real tree (nothing is answered from vouched memory).
    ops = createOpsSandbox({ config: 'watch = off\nhook = off\n' });
    expect(ops.cli(['setup', '--yes']).code).toBe(0);
    const bindfs: ChildProcess = spawn('/usr/bin/bindfs', ['-f', '-r', '/usr', ops.paths.realTree], { stdio: 'ignore' });
    try {
      expect(await waitFor(() => !!fuseMountAt(ops!.paths.realTree), 10000, 20)).toBeGreaterThanOrEqual(0);
      expect(ops.cli(['start'])).toMatchObject({ code: 0 });
      expect(linkState(ops)).toBe('view');
      expect((await freshLookup(ops)).code).toBe(0);

      // A shell already running in the root (so that nothing it needs is looked up later) will
      // look a fresh name up in the view's own mount: its handler then waits on the stopped real tree.
      const [cmd, args] = ops.sandbox.chrootArgs(['/usr/bin/sh', '-c', `read go; test -e /usr.view/lib/fscache-fresh-${Date.now()}; echo ended $?`]);
      const shell = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'ignore'] });
      let shellOut = '';
      shell.stdout!.on('data', (d) => (shellOut += d));
      const shellEnded = new Promise<number>((resolve) => shell.on('close', () => resolve(Date.now())));
      await new Promise((r) => setTimeout(r, 300));
      process.kill(bindfs.pid!, 'SIGSTOP');
      const stuckAt = Date.now();
      shell.stdin!.write('go\n');
      const flipMs = await backOnRealAfter(ops, stuckAt, 6000);
      expect(flipMs).toBeGreaterThanOrEqual(0);
      expect(flipMs).toBeLessThanOrEqual(4500);
      const timer = setTimeout(() => shell.kill('SIGKILL'), 10000);
      const hung = { ms: (await shellEnded) - stuckAt };
      clearTimeout(timer);
      expect(hung.ms).toBeLessThanOrEqual(10000);
      expect(shellOut).toMatch(/^ended 1/); // the lookup failed (connection aborted): the shell went on
      console.log(`deadlocked handler: link back on the real tree ${flipMs} ms after the real tree stopped answering; the caught launch ended after ${hung.ms} ms`);

      process.kill(bindfs.pid!, 'SIGCONT');
      expect(await runInChroot(ops.sandbox, ['/usr/bin/git', '--version'])).toMatchObject({ code: 0 });
      expect(await waitFor(() => readSupervisorState(ops!.paths)?.state === 'serving' && linkState(ops!) === 'view', 30000, 100)).toBeGreaterThanOrEqual(0);
      expect(status(ops).report.supervisor?.lastFailure).toMatchObject({ kind: 'hang' });
      expect((await freshLookup(ops)).code).toBe(0);
    } finally {
      try {
        process.kill(bindfs.pid!, 'SIGCONT');
      } catch {
        // gone
      }
      await ops.dispose();
      ops = undefined;
      bindfs.kill('SIGKILL');
    }
  });

  test('aborted FUSE connection: the link goes back within 2 s, status names the dead mount, the view is restarted and serves', async () => {
    ops = createOpsSandbox();
    started(ops);
    const pid = viewPid(ops);
    const mount = fuseMountAt(ops.paths.viewMount)!;
    const abortedAt = Date.now();
    fs.writeFileSync(`/sys/fs/fuse/connections/${mount.minor}/abort`, '1');
    const seenDead = statusNames(ops, 'dead-mount', 6000);
    const flipMs = await backOnRealAfter(ops, abortedAt, 3000);
    expect(flipMs).toBeGreaterThanOrEqual(0);
    expect(flipMs).toBeLessThanOrEqual(2000);
    expect(await seenDead).toBeDefined();
    console.log(`aborted connection: link back on the real tree ${flipMs} ms after the abort`);
    expect(await waitFor(() => !alive(pid), 5000, 50)).toBeGreaterThanOrEqual(0);
    expect(await waitFor(() => readSupervisorState(ops!.paths)?.state === 'serving' && linkState(ops!) === 'view', 15000, 50)).toBeGreaterThanOrEqual(0);
    expect(viewPid(ops)).not.toBe(pid);
    expect(status(ops).report.supervisor?.lastFailure).toMatchObject({ kind: 'dead-connection' });
    expect(await runInChroot(ops.sandbox, ['/usr/bin/git', '--version'])).toMatchObject({ code: 0 });
    expect((await freshLookup(ops)).code).toBe(0);
  });

  test('supervisor killed with -9, then the view killed: the link is back within 2 s; start afterwards succeeds', async () => {
    ops = createOpsSandbox();
    started(ops);
    const sup = readSupervisorState(ops.paths)!.pid;
    const pid = viewPid(ops);
    const killedAt = Date.now();
    process.kill(sup, 'SIGKILL');
    // The orphaned view notices (~0.5 s): it switches the link back and detaches as on stop.
    const orphanFlipMs = await backOnRealAfter(ops, killedAt, 2000);
    expect(orphanFlipMs).toBeGreaterThanOrEqual(0);
    expect(await waitFor(() => !fuseMountAt(ops!.paths.viewMount), 3000, 20)).toBeGreaterThanOrEqual(0);
    process.kill(pid, 'SIGKILL');
    const flipMs = await waitFor(() => linkState(ops!) === 'real', 2000, 10);
    expect(flipMs).toBeGreaterThanOrEqual(0);
    expect((await runInChroot(ops.sandbox, ['/usr/bin/git', '--version'])).code).toBe(0);
    console.log(`supervisor killed: the orphaned view switched the link back after ${orphanFlipMs} ms`);

    const start = ops.cli(['start']);
    expect(start).toMatchObject({ code: 0, stdout: expect.stringMatching(/^started/) });
    expect(start.stderr).not.toMatch(/already mounted/);
    expect(linkState(ops)).toBe('view');
    expect(readSupervisorState(ops.paths)!.pid).not.toBe(sup);
    expect(status(ops)).toMatchObject({ code: 0, report: { state: 'healthy' } });
  });

  test('supervisor killed while its view hangs: the guard puts the link back, ends the view, and a launch caught in the hang ends', async () => {
    ops = createOpsSandbox();
    started(ops);
    expect((await freshLookup(ops)).code).toBe(0);
    const sup = readSupervisorState(ops.paths)!.pid;
    const pid = viewPid(ops);
    stopped.push(pid);
    process.kill(pid, 'SIGSTOP'); // hung: its own orphan watch cannot run
    const killedAt = Date.now();
    process.kill(sup, 'SIGKILL');
    const caught = freshLookup(ops);
    // The guard sees the supervisor gone (250 ms), gives the probe its 2 s deadline, then acts.
    const flipMs = await backOnRealAfter(ops, killedAt, 6000);
    if (flipMs < 0) console.log(fs.readFileSync(ops.paths.log, 'utf8').slice(-3000));
    expect(flipMs).toBeGreaterThanOrEqual(0);
    expect(flipMs).toBeLessThanOrEqual(5000);
    const hung = await caught;
    expect(hung.ms).toBeLessThanOrEqual(10000);
    expect(await waitFor(() => !alive(pid), 3000, 20)).toBeGreaterThanOrEqual(0);
    expect(fuseMountAt(ops.paths.viewMount)).toBeUndefined();
    expect(await runInChroot(ops.sandbox, ['/usr/bin/git', '--version'])).toMatchObject({ code: 0 });
    console.log(`supervisor killed while its view hung: the guard put the link back after ${flipMs} ms; the caught launch ended after ${hung.ms} ms`);
    const start = ops.cli(['start']);
    expect(start).toMatchObject({ code: 0, stdout: expect.stringMatching(/^started/) });
    expect(linkState(ops)).toBe('view');
  });

  test('supervisor killed while its view hangs: status says orphaned (root and non-root agree); start replaces the hung view', async () => {
    ops = createOpsSandbox();
    started(ops);
    fs.chmodSync(ops.root, 0o755); // for status as nobody
    const healthy = [status(ops), status(ops, true)];
    expect(healthy.map((s) => [s.code, s.report.state])).toEqual([[0, 'healthy'], [0, 'healthy']]);

    const sup = readSupervisorState(ops.paths)!.pid;
    const pid = viewPid(ops);
    stopped.push(pid);
    // The guard would end the hung view 2 s after the supervisor's death (its own test above): here the
    // orphan must stay while status is asked twice and start replaces it, so the guard goes first.
    const guard = fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p)).find((p) => {
      try {
        const stat = fs.readFileSync(`/proc/${p}/stat`, 'utf8');
        return stat.includes('(fscache-guard)') && Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === sup;
      } catch {
        return false;
      }
    });
    expect(guard).toBeDefined();
    process.kill(Number(guard), 'SIGKILL');
    process.kill(pid, 'SIGSTOP');
    process.kill(sup, 'SIGKILL');
    expect(await waitFor(() => !alive(sup), 2000, 10)).toBeGreaterThanOrEqual(0);
    const asRoot = status(ops);
    const asNobody = status(ops, true);
    expect([asRoot.code, asRoot.report.state]).toEqual([4, 'orphaned']);
    expect([asNobody.code, asNobody.report.state, asNobody.report.problems]).toEqual([asRoot.code, asRoot.report.state, asRoot.report.problems]);

    const t0 = Date.now();
    const start = ops.cli(['start']);
    expect(start).toMatchObject({ code: 0, stdout: expect.stringMatching(/^started/) });
    expect(Date.now() - t0).toBeLessThan(20000);
    expect(alive(pid)).toBe(false); // killed after the abort
    expect(linkState(ops)).toBe('view');
    expect((await freshLookup(ops)).code).toBe(0);
    expect(readSupervisorRecord(ops.paths)?.alive).toBe(true);
  });

  // libfuse2: the end of a pause renews the view (Supervisor.renew): a fresh view's start and check come first.
  const backWithinMs = process.env.FSCACHE_TEST_SESSION === 'libfuse2' ? 8000 : 1500;
  test('pause: the link leaves the view while the pause file exists and comes back within about a second after (libfuse2: after a renewal)', async () => {
    ops = createOpsSandbox();
    started(ops);
    fs.writeFileSync(pauseFile(ops.paths), '');
    expect(await waitFor(() => linkState(ops!) === 'real', 2000, 10)).toBeGreaterThanOrEqual(0);
    expect(await waitFor(() => readSupervisorState(ops!.paths)?.state === 'paused', 2000, 10)).toBeGreaterThanOrEqual(0);
    expect(status(ops).report.state).toBe('paused');
    await new Promise((r) => setTimeout(r, 1500));
    expect(linkState(ops)).toBe('real'); // never switched to the view while paused
    fs.rmSync(pauseFile(ops.paths));
    const backMs = await waitFor(() => linkState(ops!) === 'view', backWithinMs + 2000, 10);
    expect(backMs).toBeGreaterThanOrEqual(0);
    expect(backMs).toBeLessThanOrEqual(backWithinMs);
    expect(fs.readlinkSync(ops.paths.usrLink)).toBe(linkTargetPath(ops.paths, 'view'));
    expect(await waitFor(() => status(ops!).report.state === 'healthy', 3000, 100)).toBeGreaterThanOrEqual(0);
  });

  test('the supervisor and the view it starts run node and the CLI from the real tree, and the view knows its supervisor', () => {
    ops = createOpsSandbox();
    started(ops);
    const sup = readSupervisorState(ops.paths)!.pid;
    const view = JSON.parse(fs.readFileSync(ops.paths.viewState, 'utf8'));
    expect(view.supervisorPid).toBe(sup);
    for (const pid of [sup, view.pid]) {
      const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      expect(path.isAbsolute(argv[1])).toBe(true);
      expect(argv[1].startsWith(ops.paths.viewMount + '/')).toBe(false);
    }
  });

  test('a view run by hand (fscache mount) stays when its parent goes; start refuses it, stop ends it', async () => {
    ops = createOpsSandbox();
    expect(ops.cli(['setup', '--yes']).code).toBe(0);
    ops.bindHostUsr();
    // Its parent, a shell, exits at once: the view is reparented, as an orphaned view would be.
    spawnSync('sh', ['-c', `${process.execPath} ${CLI_ENTRY} --root ${ops.root} mount </dev/null >/dev/null 2>&1 &`], { timeout: 10000 });
    expect(await waitFor(() => fs.existsSync(ops!.paths.viewState) && !!fuseMountAt(ops!.paths.viewMount), 15000, 50)).toBeGreaterThanOrEqual(0);
    switchLink(ops.paths, 'view');
    await new Promise((r) => setTimeout(r, 1500));
    expect(fuseMountAt(ops.paths.viewMount)).toBeDefined();
    expect(linkState(ops)).toBe('view');
    expect(JSON.parse(fs.readFileSync(ops.paths.viewState, 'utf8')).supervisorPid).toBeUndefined();
    const s = status(ops);
    expect([s.code, s.report.state]).toEqual([4, 'degraded']);
    expect(s.report.problems.join()).toMatch(/no supervisor watches it/);

    const start = ops.cli(['start']);
    expect(start.code).toBe(6);
    expect(start.stderr).toMatch(/started by hand/);
    expect(linkState(ops)).toBe('view'); // refused: nothing changed
    expect(ops.cli(['stop'])).toMatchObject({ code: 0 });
    expect(linkState(ops)).toBe('real');
    expect(fuseMountAt(ops.paths.viewMount)).toBeUndefined();
  });

  test('after stop, a detached view still serving its last user is draining (exit 7), then stopped', async () => {
    ops = createOpsSandbox();
    started(ops);
    const pid = viewPid(ops);
    // A program mapped from the view keeps the detached connection, and the view, alive.
    const [cmd, args] = ops.sandbox.chrootArgs(['/usr/bin/sleep', '60']);
    const user = execFile(cmd, args, { timeout: 90000 });
    await new Promise((r) => setTimeout(r, 500));
    expect(ops.cli(['stop']).code).toBe(0);
    expect(alive(pid)).toBe(true);
    expect(status(ops)).toMatchObject({ code: 7, report: { health: 'stopped', state: 'draining' } });
    user.kill('SIGKILL');
    expect(await waitFor(() => !alive(pid), 10000, 50)).toBeGreaterThanOrEqual(0);
    expect(status(ops)).toMatchObject({ code: 7, report: { state: 'stopped' } });
  });

  test('fusectl is mounted when it is missing (in a private mount namespace)', () => {
    const script = `
      const { ensureFusectl, FUSECTL_DIR } = require(${JSON.stringify(path.resolve('dist/fs/fuse/fusectl.js'))});
      const { mountTable } = require(${JSON.stringify(path.resolve('dist/core/mounts.js'))});
      const { derivePaths } = require(${JSON.stringify(path.resolve('dist/core/paths.js'))});
      const { defaultConfig } = require(${JSON.stringify(path.resolve('dist/core/config.js'))});
      const has = () => mountTable().some((m) => m.mountPoint === FUSECTL_DIR && m.fstype === 'fusectl');
      const before = has();
      const problem = ensureFusectl(derivePaths('/nonexistent-root', defaultConfig()));
      console.log(JSON.stringify({ before, problem: problem ?? null, after: has() }));`;
    const r = spawnSync('unshare', ['--mount', '--propagation', 'private', 'sh', '-c',
      'umount /sys/fs/fuse/connections 2>/dev/null; exec "$0" -e "$1"', process.execPath, script], { encoding: 'utf8', timeout: 20000 });
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ before: false, problem: null, after: true });
  });

  test('node and the CLI found through R/usr or the view map to the same paths in the real tree', () => {
    const paths = derivePaths('/r', defaultConfig());
    expect(inRealTree(paths, '/r/usr/bin/node')).toBe('/r/usr.real/bin/node');
    expect(inRealTree(paths, `${paths.viewMount}/lib/fscache/dist/cli/main.js`)).toBe('/r/usr.real/lib/fscache/dist/cli/main.js');
    expect(inRealTree(paths, '/r/usr.real/bin/node')).toBe('/r/usr.real/bin/node');
    expect(inRealTree(paths, '/r/usrx/bin/node')).toBe('/r/usrx/bin/node');
    expect(inRealTree(paths, '/opt/node/bin/node')).toBe('/opt/node/bin/node');
  });
});
