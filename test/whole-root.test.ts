/**
 * fscache on a whole root, installed inside the /usr it serves and driven as an init
 * script drives it (chroot R, root /, an init-like environment): start, at least 100
 * launches of real programs through the view, every verb, stop, start, stop. Nothing may
 * hang (every call is bounded; a deadlocked view is freed by aborting its connection)
 * and nothing may fail.
 */
import * as fs from 'fs';
import * as path from 'path';
import { createWholeRoot, RunResult, WholeRoot, wholeRootAvailable } from './helpers/whole-root';
import { afterEachDispose } from './helpers/cleanup';
import { waitFor } from './helpers/view-sandbox';
import { resting } from './helpers/supervised';

const skip = wholeRootAvailable();
const maybe = skip ? describe.skip : describe;
if (skip) console.warn(`whole-root tests skipped: ${skip}`);

const session = process.env.FSCACHE_TEST_SESSION;

/** Real programs of a login session, each with a check of what it printed. */
const LAUNCHES: Array<[string[], RegExp]> = [
  [['/usr/bin/git', '--version'], /^git version/],
  [['/usr/bin/perl', '-MPOSIX', '-e', 'print floor(6.5*7)'], /^45$/],
  [['/usr/bin/python3', '-c', 'import json, sqlite3, hashlib; print(json.dumps(hashlib.sha256(b"x").hexdigest()[:6]))'], /^"2d7116"$/],
  [['/bin/bash', '-c', 'echo $((6*7)) | /usr/bin/sort'], /^42$/],
  [['/bin/sh', '-c', 'printf "int main(){return 0;}" | /usr/bin/gcc -x c -o /tmp/t - && /tmp/t && echo built'], /^built$/],
];

function describeFailure(what: string, r: RunResult): string {
  return `${what}: code ${r.code} signal ${r.signal}${r.timedOut ? ' (timed out)' : ''} after ${r.ms} ms\nstdout: ${r.stdout.slice(-800)}\nstderr: ${r.stderr.slice(-800)}`;
}

maybe('whole root: fscache installed in the /usr it serves', () => {
  let wr: WholeRoot | undefined;
  afterEachDispose(() => wr, () => (wr = undefined));

  test('start, 100 launches through the view, every verb, stop, start, stop: nothing hangs, nothing fails', async () => {
    wr = createWholeRoot({ config: `access_flush_ms = 200\n${session ? `fuse_session = ${session}\n` : ''}` });
    const failures: string[] = [];
    const expectOk = async (what: string, r: Promise<RunResult>, codes = [0]) => {
      const res = await r;
      if (res.timedOut || !codes.includes(res.code ?? -1)) failures.push(describeFailure(what, res));
      return res;
    };

    await expectOk('start', wr.fscache(['start'], { timeoutMs: 60000 }));
    expect(failures).toEqual([]);
    const usr = fs.readlinkSync(path.join(wr.root, 'usr'));
    expect(usr).not.toBe('usr.real');

    let launches = 0;
    for (let round = 0; round < 20; round++) {
      for (const [argv, expected] of LAUNCHES) {
        const r = await expectOk(argv.join(' '), wr.run(argv, { timeoutMs: 30000 }));
        launches++;
        if (!expected.test(r.stdout.trim())) failures.push(describeFailure(`${argv.join(' ')} printed something else`, r));
        if (failures.length > 3) break;
      }
      if (failures.length > 3) break;
    }
    expect(failures).toEqual([]);
    expect(launches).toBeGreaterThanOrEqual(100);

    const status = await expectOk('status', wr.fscache(['status', '--json'], { timeoutMs: 20000 }));
    expect(failures).toEqual([]);
    expect(JSON.parse(status.stdout).health).toBe('healthy');
    await expectOk('sync', wr.fscache(['sync'], { timeoutMs: 120000 }));
    await expectOk('verify', wr.fscache(['verify'], { timeoutMs: 120000 }));
    await expectOk('warm', wr.fscache(['warm'], { timeoutMs: 120000 }));
    await expectOk('rerandomize', wr.fscache(['rerandomize'], { timeoutMs: 30000 }));
    await expectOk('launch after the verbs', wr.run(['/usr/bin/git', '--version'], { timeoutMs: 30000 }));
    await expectOk('stop', wr.fscache(['stop'], { timeoutMs: 60000 }));
    expect(fs.readlinkSync(path.join(wr.root, 'usr'))).toBe('usr.real');
    await expectOk('start again', wr.fscache(['start'], { timeoutMs: 60000 }));
    await expectOk('launch after restart', wr.run(['/usr/bin/python3', '-c', 'import json'], { timeoutMs: 30000 }));
    await expectOk('stop again', wr.fscache(['stop'], { timeoutMs: 60000 }));
    expect(failures).toEqual([]);
  });

  test('the supervisor at rest (guard/rest.c) in the installed root: it rests, a killed view and a pause wake it, launches never fail, stop ends it', async () => {
    wr = createWholeRoot({ config: `supervisor_rest_seconds = 2\nhook = off\n${session ? `fuse_session = ${session}\n` : ''}` });
    const root = wr.root;
    const failures: string[] = [];
    const expectOk = async (what: string, r: Promise<RunResult>) => {
      const res = await r;
      if (res.timedOut || res.code !== 0) failures.push(describeFailure(what, res));
      return res;
    };
    const usrTarget = () => fs.readlinkSync(path.join(root, 'usr'));
    const json = (file: string) => JSON.parse(fs.readFileSync(path.join(root, 'run', 'fscache', file), 'utf8'));
    const launches = async (what: string) => {
      for (const [argv, expected] of LAUNCHES.slice(0, 4)) {
        const r = await expectOk(`${what}: ${argv.join(' ')}`, wr!.run(argv, { timeoutMs: 30000 }));
        if (!expected.test(r.stdout.trim())) failures.push(describeFailure(`${what}: ${argv.join(' ')} printed something else`, r));
      }
    };

    await expectOk('start', wr.fscache(['start'], { timeoutMs: 60000 }));
    expect(failures).toEqual([]);
    const supervisor = json('supervisor.json').pid as number;
    expect(await waitFor(() => resting(supervisor), 15000, 50)).toBeGreaterThanOrEqual(0);
    await launches('at rest');

    // Woken by the view's death: it runs node again from the real tree, with the init-like environment it was started with.
    const view = json('view.json').pid as number;
    process.kill(view, 'SIGKILL');
    expect(await waitFor(() => usrTarget() === 'usr.real', 3000, 5)).toBeGreaterThanOrEqual(0);
    expect(await waitFor(() => usrTarget() !== 'usr.real' && json('view.json').pid !== view, 20000, 50)).toBeGreaterThanOrEqual(0);
    expect(json('supervisor.json')).toMatchObject({ pid: supervisor, lastFailure: { kind: 'exit' } });
    await launches('after the restart');
    expect(await waitFor(() => resting(supervisor), 15000, 50)).toBeGreaterThanOrEqual(0);

    // A package transaction's pause and resume, from rest.
    await expectOk('pause', wr.fscache(['pause'], { timeoutMs: 30000 }));
    expect(usrTarget()).toBe('usr.real');
    await launches('paused');
    await expectOk('resume', wr.fscache(['resume'], { timeoutMs: 60000 }));
    expect(usrTarget()).not.toBe('usr.real');
    expect(await waitFor(() => resting(supervisor), 15000, 50)).toBeGreaterThanOrEqual(0);

    const status = await expectOk('status', wr.fscache(['status', '--json'], { timeoutMs: 20000 }));
    expect(failures).toEqual([]);
    expect(JSON.parse(status.stdout)).toMatchObject({ health: 'healthy', supervisor: { pid: supervisor, restingSince: expect.any(Number) } });
    await expectOk('stop', wr.fscache(['stop'], { timeoutMs: 60000 }));
    expect(usrTarget()).toBe('usr.real');
    expect(await waitFor(() => !fs.existsSync(`/proc/${supervisor}`), 10000, 50)).toBeGreaterThanOrEqual(0);
    expect(failures).toEqual([]);
  });
});
