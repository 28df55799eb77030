/**
 * The supervisor's rest (supervisor_rest_seconds, guard/rest.c, fs/service/rest.ts): after a
 * quiet while the Node supervisor execs the small watcher in its own process (same pid), which
 * keeps status fresh, flips R/usr back at once when the view dies or hangs, stops on SIGTERM,
 * and wakes the Node supervisor for a restart, a pause or the daemon. Real views in sandbox
 * roots; every call bounded; cleanup aborts any FUSE connection left below the root.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import { runInChroot } from '../cli/demo';
import { LOG_MAX_BYTES } from '../core/log';
import { fuseMountAt } from '../fs/fuse/fusectl';
import { processAlive } from '../fs/service/stale';
import { pauseFile } from '../fs/switch/pause';
import { readSupervisorState } from '../fs/service/supervisor';
import { hookPaths } from '../loader-hook/hook-paths';
import { CLI_ENTRY } from '../fs/service/view-process';
import { createOpsSandbox, OpsSandbox } from './helpers/ops-sandbox';
import { backOnRealAfter, disposeAfterFaults, linkState, processImage, resting, viewPid } from './helpers/supervised';
import { fuseAvailable, waitFor } from './helpers/view-sandbox';

const skip = fuseAvailable();
const maybe = skip ? describe.skip : describe;
if (skip) console.warn(`supervisor rest tests skipped: ${skip}`);

jest.setTimeout(120000);


const awake = (pid: number) => processImage(pid)?.exe === fs.realpathSync(process.execPath);

function status(ops: OpsSandbox): { code: number | null; state: string; supervisor: { pid: number; restarts: number; restingSince: number | null; lastFailure: { kind: string } | null } | null } {
  const r = spawnSync(process.execPath, [CLI_ENTRY, '--root', ops.root, 'status', '--json'], { encoding: 'utf8', timeout: 20000 });
  const report = JSON.parse(r.stdout);
  return { code: r.status, state: report.state, supervisor: report.supervisor };
}

/** A 2 s rest and no hook (its daemon plays no part): the config of most tests here. */
const REST_2S = 'supervisor_rest_seconds = 2\nhook = off\n';

/** Started with a 2 s rest; returns the supervisor's pid once it rests. */
async function startedAndResting(ops: OpsSandbox): Promise<number> {
  if (!fs.existsSync(ops.paths.viewMount)) {
    expect(ops.cli(['setup', '--yes']).code).toBe(0);
    ops.bindHostUsr();
  }
  expect(ops.cli(['start'])).toMatchObject({ code: 0 });
  expect(linkState(ops)).toBe('view');
  const pid = readSupervisorState(ops.paths)!.pid;
  expect(await waitFor(() => resting(pid), 15000, 50)).toBeGreaterThanOrEqual(0);
  return pid;
}

maybe('supervisor rest', () => {
  let ops: OpsSandbox | undefined;
  const stopped: number[] = [];
  afterEach(async () => {
    await disposeAfterFaults(ops, stopped);
    ops = undefined;
  });

  test('at rest one small process keeps the watch under the same pid: status stays healthy, launches run through the view, stop ends it all', async () => {
    ops = createOpsSandbox({ config: REST_2S });
    const pid = await startedAndResting(ops);
    const image = processImage(pid)!;
    expect(image.rssKiB).toBeLessThan(4096);
    // Longer than status's freshness (3 s): only the rest's own probes keep it healthy.
    await new Promise((r) => setTimeout(r, 4000));
    const s = status(ops);
    expect(s).toMatchObject({ code: 0, state: 'healthy', supervisor: { pid, restingSince: expect.any(Number) } });
    expect(await runInChroot(ops.sandbox, ['/usr/bin/git', '--version'])).toMatchObject({ code: 0, stdout: expect.stringMatching(/^git version/) });
    expect(linkState(ops)).toBe('view');
    console.log(`at rest: supervisor pid ${pid} is ${image.exe}, ${image.rssKiB} KiB resident`);

    // The file log (the supervisor's stderr when start detached it) stays bounded at rest, as core/log.ts keeps it awake.
    fs.appendFileSync(ops.paths.log, 'x'.repeat(LOG_MAX_BYTES + 4096) + '\n');
    expect(await waitFor(() => fs.statSync(ops!.paths.log).size < LOG_MAX_BYTES, 15000, 200)).toBeGreaterThanOrEqual(0);
    expect(fs.statSync(`${ops.paths.log}.1`).size).toBeGreaterThan(LOG_MAX_BYTES);

    // What is no pause to fs/switch/pause.ts (here a symlink in its place) does not wake it either: no wake loop.
    fs.symlinkSync('/etc/hostname', pauseFile(ops.paths));
    await new Promise((r) => setTimeout(r, 2500));
    expect({ resting: resting(pid), link: linkState(ops) }).toEqual({ resting: true, link: 'view' });
    fs.rmSync(pauseFile(ops.paths));

    const view = viewPid(ops);
    expect(ops.cli(['stop'])).toMatchObject({ code: 0 });
    expect(linkState(ops)).toBe('real');
    expect(await waitFor(() => !processAlive(pid) && !fuseMountAt(ops!.paths.viewMount), 10000, 50)).toBeGreaterThanOrEqual(0);
    expect(fs.existsSync(`${ops.paths.runDir}/supervisor.json`)).toBe(false);
    expect(await waitFor(() => !processAlive(view), 10000, 50)).toBeGreaterThanOrEqual(0);
  });

  test('the view killed at rest: R/usr back within a second, the Node supervisor (same pid) restarts it with the failure recorded, then rests again', async () => {
    ops = createOpsSandbox({ config: REST_2S });
    const pid = await startedAndResting(ops);
    const old = viewPid(ops);
    const killedAt = Date.now();
    process.kill(old, 'SIGKILL');
    const flipMs = await backOnRealAfter(ops, killedAt, 3000);
    expect(flipMs).toBeGreaterThanOrEqual(0);
    expect(flipMs).toBeLessThan(1000);
    expect(await waitFor(() => linkState(ops!) === 'view' && viewPid(ops!) !== old, 20000, 50)).toBeGreaterThanOrEqual(0);
    expect(readSupervisorState(ops.paths)).toMatchObject({ pid, restarts: 1, lastFailure: { kind: 'exit' } });
    expect(await runInChroot(ops.sandbox, ['/usr/bin/git', '--version'])).toMatchObject({ code: 0 });
    expect(await waitFor(() => resting(pid), 15000, 50)).toBeGreaterThanOrEqual(0);
    console.log(`the view killed at rest: R/usr back on the real tree after ${flipMs} ms, restarted, resting again`);
  });

  test('the view hung at rest (SIGSTOP): R/usr back within the probe deadline, the caught launch ends, the view is replaced', async () => {
    ops = createOpsSandbox({ config: REST_2S });
    const pid = await startedAndResting(ops);
    const old = viewPid(ops);
    stopped.push(old);
    const stoppedAt = Date.now();
    process.kill(old, 'SIGSTOP');
    const caught = runInChroot(ops.sandbox, ['/usr/bin/sh', '-c', `test -e /usr/lib/fscache-fresh-${Date.now()}; echo done`]);
    const flipMs = await backOnRealAfter(ops, stoppedAt, 6000);
    expect(flipMs).toBeGreaterThanOrEqual(0);
    // One probe interval (1 s) plus the deadline (2 s), and timers' slack on a shared machine.
    expect(flipMs).toBeLessThanOrEqual(4500);
    const hung = await caught;
    expect(hung.ms).toBeLessThanOrEqual(10000);
    expect(await waitFor(() => linkState(ops!) === 'view' && viewPid(ops!) !== old, 20000, 50)).toBeGreaterThanOrEqual(0);
    expect(readSupervisorState(ops.paths)).toMatchObject({ pid, lastFailure: { kind: 'hang' } });
    expect(processAlive(old)).toBe(false);
    console.log(`the view hung at rest: R/usr back after ${flipMs} ms; the caught launch ended after ${hung.ms} ms`);
  });

  test('the resting supervisor killed with -9: the view puts R/usr back and detaches by itself, the guard exits, start afterwards serves', async () => {
    ops = createOpsSandbox({ config: REST_2S });
    const pid = await startedAndResting(ops);
    const view = viewPid(ops);
    const killedAt = Date.now();
    process.kill(pid, 'SIGKILL');
    const flipMs = await backOnRealAfter(ops, killedAt, 5000);
    expect(flipMs).toBeGreaterThanOrEqual(0);
    expect(flipMs).toBeLessThan(2000);
    expect(await waitFor(() => !fuseMountAt(ops!.paths.viewMount), 10000, 50)).toBeGreaterThanOrEqual(0);
    expect(await waitFor(() => !processAlive(view), 10000, 50)).toBeGreaterThanOrEqual(0);
    expect(ops.cli(['start'])).toMatchObject({ code: 0 });
    expect(linkState(ops)).toBe('view');
    expect(await runInChroot(ops.sandbox, ['/usr/bin/git', '--version'])).toMatchObject({ code: 0 });
    console.log(`the resting supervisor killed: R/usr back on the real tree after ${flipMs} ms`);
  });

  test('a wake and a stop at once (SIGURG or SIGUSR2, then SIGTERM): whichever way the SIGTERM meets the exec, the supervisor ends, R/usr is on the real tree, the view detaches', async () => {
    ops = createOpsSandbox({ config: REST_2S });
    for (const [first, gapMs] of [['SIGURG', 0], ['SIGUSR2', 0], ['SIGURG', 30], ['SIGURG', 150]] as const) {
      const pid = await startedAndResting(ops);
      const view = viewPid(ops);
      process.kill(pid, first);
      if (gapMs) await new Promise((r) => setTimeout(r, gapMs));
      process.kill(pid, 'SIGTERM');
      expect(await waitFor(() => !processAlive(pid), 10000, 20)).toBeGreaterThanOrEqual(0);
      expect(linkState(ops)).toBe('real');
      expect(await waitFor(() => !fuseMountAt(ops!.paths.viewMount) && !processAlive(view), 10000, 50)).toBeGreaterThanOrEqual(0);
      if (fs.existsSync(`${ops.paths.runDir}/supervisor.json`)) ops.cli(['stop']); // a supervisor ended by the signal's default action leaves its state
      expect(ops.cli(['status']).code).toBe(7);
    }
  });

  test('a renewal asked at rest (SIGUSR2, what a libfuse2 view sends when a file it opened changed): libfuse2 gets a fresh view, the kernel session keeps its own; R/usr back on the view', async () => {
    ops = createOpsSandbox({ config: REST_2S });
    const pid = await startedAndResting(ops);
    const old = viewPid(ops);
    process.kill(pid, 'SIGUSR2');
    expect(await waitFor(() => awake(pid), 5000, 10)).toBeGreaterThanOrEqual(0);
    const renewed = process.env.FSCACHE_TEST_SESSION === 'libfuse2';
    expect(await waitFor(() => linkState(ops!) === 'view' && readSupervisorState(ops!.paths)?.state === 'serving' && (viewPid(ops!) !== old) === renewed, 20000, 20)).toBeGreaterThanOrEqual(0);
    expect(readSupervisorState(ops.paths)).toMatchObject({ pid, restarts: 0, lastFailure: null });
    expect(await runInChroot(ops.sandbox, ['/usr/bin/git', '--version'])).toMatchObject({ code: 0 });
    expect(await waitFor(() => resting(pid), 15000, 50)).toBeGreaterThanOrEqual(0);
  });

  test('a pause wakes it: R/usr stays on the real tree while paused, back on the view after; a signal for the daemon starts the daemon', async () => {
    ops = createOpsSandbox({ config: 'supervisor_rest_seconds = 2\ndaemon_idle_seconds = 1\n' });
    const pid = await startedAndResting(ops);
    fs.writeFileSync(pauseFile(ops.paths), '');
    expect(await waitFor(() => readSupervisorState(ops!.paths)?.state === 'paused', 5000, 20)).toBeGreaterThanOrEqual(0);
    expect(awake(pid)).toBe(true);
    expect(linkState(ops)).toBe('real');
    fs.rmSync(pauseFile(ops.paths));
    expect(await waitFor(() => readSupervisorState(ops!.paths)?.state === 'serving' && linkState(ops!) === 'view', 20000, 20)).toBeGreaterThanOrEqual(0);
    expect(await waitFor(() => resting(pid), 15000, 50)).toBeGreaterThanOrEqual(0);

    // The daemon exits idle after 1 s; the view's request (SIGURG to its supervisor) wakes the rest, which starts it.
    const pidFile = hookPaths(ops.paths).pidFile;
    expect(await waitFor(() => fs.readFileSync(pidFile, 'utf8').trim() === 'idle', 15000, 50)).toBeGreaterThanOrEqual(0);
    expect(await waitFor(() => resting(pid), 15000, 50)).toBeGreaterThanOrEqual(0);
    process.kill(pid, 'SIGURG');
    expect(await waitFor(() => processAlive(Number(fs.readFileSync(pidFile, 'utf8').trim())), 15000, 50)).toBeGreaterThanOrEqual(0);
    expect(await waitFor(() => linkState(ops!) === 'view', 5000, 20)).toBeGreaterThanOrEqual(0);
    expect(status(ops)).toMatchObject({ code: 0, state: 'healthy' });
  });
});
