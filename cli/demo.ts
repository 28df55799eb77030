/**
 * `fscache demo`: the whole system in a sandbox root under a temporary directory:
 * setup (R/usr moved to R/usr.real), then this machine's /usr bound read-only there as
 * the real tree, start (view mounted, link switched), real programs launched in a
 * chroot three times (the first run fills the flash store; the second, after the page
 * cache is dropped, reads from flash; the third is warm), the loader hook (cli/demo-hook.ts:
 * a library built now, launched with LD_AUDIT, mapped as one shared randomized image), status,
 * stop; then everything is cleaned up, also on Ctrl-C.
 */
import { ChildProcess, execFile, execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { defaultConfig } from '../core/config';
import { StoreIndex } from '../fs/store/index-db';
import { silentLogger } from '../core/log';
import { derivePaths } from '../core/paths';
import { makeSandbox, Sandbox } from '../dev/sandbox';
import { CLI_ENTRY } from '../fs/service/view-process';
import type { ViewState } from '../fs/view/view-service';
import { checkFuseDevice } from '../fs/service/preflight';
import { readTextOr } from '../core/write-atomic';
import { hookPaths } from '../loader-hook/hook-paths';
import { DEMO_LIB_DIR, DEMO_SERVED_DIR, demoHook, demoServed } from './demo-hook';

export const DEMO_PROGRAMS: Array<{ label: string; argv: string[] }> = [
  { label: 'python3 -c "import json, zlib, sqlite3"', argv: ['/usr/bin/python3', '-c', 'import json, zlib, sqlite3; print(zlib.crc32(b"fscache"))'] },
  { label: 'perl -MPOSIX -e ...', argv: ['/usr/bin/perl', '-MPOSIX', '-e', 'print floor(2.5), "\\n"'] },
  { label: 'git --version', argv: ['/usr/bin/git', '--version'] },
  { label: 'gcc hello.c && ./hello', argv: ['/bin/sh', '-c', 'printf "#include <stdio.h>\\nint main(void){puts(\\"hello from the view\\");return 0;}\\n" > /tmp/hello.c && gcc -o /tmp/hello /tmp/hello.c && /tmp/hello'] },
];

export function runInChroot(sandbox: Sandbox, argv: string[]): Promise<{ ms: number; code: number; stdout: string; stderr: string }> {
  const [cmd, args] = sandbox.chrootArgs(argv);
  const t0 = process.hrtime.bigint();
  return new Promise((resolve) =>
    execFile(cmd, args, { env: { PATH: '/usr/bin:/bin', HOME: '/tmp', LANG: 'C' }, timeout: 120000 }, (err, stdout, stderr) =>
      resolve({
        ms: Number(process.hrtime.bigint() - t0) / 1e6,
        code: err ? (typeof err.code === 'number' ? err.code : 1) : 0,
        stdout: String(stdout),
        stderr: String(stderr) || (err && typeof err.code === 'string' ? err.message : ''),
      }),
    ),
  );
}

export async function demoVerb(): Promise<number> {
  checkFuseDevice();
  const say = (s: string) => process.stdout.write(s + '\n');
  let sandbox: Sandbox | undefined;
  let cleaning: Promise<void> | undefined;
  const children = new Set<ChildProcess>(); // the hook part's held launches
  const cli = (args: string[]) => {
    const r = spawnSync(process.execPath, [CLI_ENTRY, '--root', sandbox!.root, ...args], { encoding: 'utf8', timeout: 60000 });
    return { code: r.status, out: (r.stdout + r.stderr).trim() };
  };
  const cleanup = () =>
    (cleaning ??= (async () => {
      for (const c of children) c.kill('SIGKILL');
      if (sandbox) {
        cli(['stop']);
        // The stopped view exits once its last user is gone; wait for it before unmounting the real tree.
        const pid = viewPid(sandbox.root);
        if (pid) await waitForExit(pid, 10000);
        sandbox.cleanup();
      }
    })());
  const onSignal = () => {
    say('\ninterrupted: cleaning up');
    void cleanup().then(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    sandbox = makeSandbox({ prefix: 'fscache-demo-', beforeSetup: true });
    // As a real root: nobody (the view part's setuid program's real uid) walks every path from it.
    fs.chmodSync(sandbox.root, 0o755);
    // As a booted root: the hook reads /proc/self/fd to tell a library found through the view (cleanup unmounts it).
    fs.mkdirSync(path.join(sandbox.root, 'proc'));
    execFileSync('mount', ['-t', 'proc', 'proc', path.join(sandbox.root, 'proc')]);
    const paths = derivePaths(sandbox.root, defaultConfig());
    // The hook serves only the demo's own library: this machine's libraries are not built to be randomized.
    fs.writeFileSync(path.join(sandbox.root, 'etc', 'fscache.conf'), `library_dirs = ${DEMO_LIB_DIR}, ${DEMO_SERVED_DIR}\n`);
    say(`sandbox root ${sandbox.root} (R/usr is a directory, as on a system before fscache)`);
    const step = (title: string, args: string[]) => {
      const r = cli(args);
      say(`\n$ fscache ${args.join(' ')}   # ${title}\n${r.out.replace(/^/gm, '  ')}`);
      return r;
    };
    step('refused: R/usr is still a directory', ['start']);
    step('one-time move of R/usr to R/usr.real', ['setup', '--yes']);
    // An overlay: the demo adds a library and a setuid program to the real tree, never to this machine's /usr.
    sandbox.overlay('/usr', paths.realTree);
    say(`  (the demo now mounts an overlay of this machine's /usr at ${paths.realTree} as the real tree; /usr itself is never written)`);
    if (step('mount the view, check it, switch the link', ['start']).code !== 0) return 1;

    say(`\n${'program, launched in a chroot of R'.padEnd(44)} ${'1st (fills)'.padStart(12)} ${'2nd (flash)'.padStart(12)} ${'3rd (warm)'.padStart(12)}`);
    say(`${''.padEnd(44)} ${''.padStart(12)} ${'cache dropped'.padStart(12)}`);
    let failures = 0;
    for (const program of DEMO_PROGRAMS) {
      const first = await runInChroot(sandbox, program.argv);
      // Let the background copies of this program's files land before the second run.
      await waitForFills(paths.viewState);
      // The kernel forgets what it cached, so the second run reads its files through the view, from flash.
      execFileSync('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);
      const second = await runInChroot(sandbox, program.argv);
      const third = await runInChroot(sandbox, program.argv);
      const fmt = (r: { ms: number; code: number }) => (r.code === 0 ? `${r.ms.toFixed(0)} ms` : `FAILED (${r.code})`);
      say(`${program.label.padEnd(44)} ${fmt(first).padStart(12)} ${fmt(second).padStart(12)} ${fmt(third).padStart(12)}`);
      const failed = [first, second, third].find((r) => r.code !== 0);
      if (failed) {
        failures++;
        say(`  ${failed.stderr.trim().split('\n').slice(-3).join('\n  ')}`);
      }
    }
    if (!(await demoHook(sandbox, paths, say, children))) failures++;
    if (!(await demoServed(sandbox, paths, say, children))) failures++;
    if (failures) say(`\nthe daemon's log, last lines:\n${(readTextOr(hookPaths(paths).logFile) ?? '(none)').slice(-2000).replace(/^/gm, '  ')}`);
    await new Promise((r) => setTimeout(r, 2200)); // one index flush
    const state = readViewState(paths.viewState);
    step('what is running, and how well', ['status']);
    if (state) {
      say(`\nopens through the view: ${state.view.opens}; from flash: ${state.view.hits}; from the real tree: ${state.view.misses}`);
      say(`bytes read from flash: ${state.view.bytesFromStore}; from the real tree: ${state.view.bytesFromReal}`);
      say(`requests that reached the view: ${Object.entries(state.requests).map(([k, v]) => `${k} ${v}`).join(', ')}`);
    }
    const index = StoreIndex.open(paths.index, silentLogger, { readonly: true });
    const top = index.all().sort((a, b) => b.hits - a.hits).slice(0, 5);
    index.close();
    say('most used copies on flash:');
    for (const e of top) say(`  ${String(e.hits).padStart(4)} hits  ${path.join('/usr', e.path)}`);
    step('the link goes back first; the view serves its last users, then exits', ['stop']);
    say(failures ? `\n${failures} part(s) failed` : '\nall programs ran through the view; shared randomized images reached processes through the hook and under the libraries\' names through the view; cleaning up');
    return failures ? 1 : 0;
  } finally {
    await cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

function readViewState(file: string): ViewState | undefined {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as ViewState;
  } catch {
    return undefined;
  }
}

function viewPid(root: string): number | undefined {
  return readViewState(derivePaths(root, defaultConfig()).viewState)?.pid;
}

async function waitForExit(pid: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Waits until the view reports no fill in progress for a moment (bounded). */
async function waitForFills(stateFile: string): Promise<void> {
  const deadline = Date.now() + 10000;
  let last = -1;
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 300));
    const s = readViewState(stateFile);
    const fills = (s?.store?.fills ?? 0) + (s?.store?.fillFailures ?? 0);
    if (fills === last) return;
    last = fills;
  }
}
