/**
 * `fscache demo`: the whole system in a sandbox root under a temporary directory,
 * whose real tree is this machine's /usr bound read-only. Starts the view, launches
 * real programs through it in a chroot twice (the first run fills the flash store,
 * the second is served from it), prints what happened, and cleans up everything,
 * also on Ctrl-C.
 */
import { execFile } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { defaultConfig } from '../fs/config';
import { StoreIndex } from '../fs/index-db';
import { silentLogger } from '../fs/log';
import { derivePaths } from '../fs/paths';
import { makeSandbox, Sandbox } from '../fs/sandbox';
import { startViewProcess, ViewProcess } from '../fs/view-process';
import { checkFuseDevice } from '../fs/preflight';

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
  let view: ViewProcess | undefined;
  let cleaning: Promise<void> | undefined;
  const cleanup = () =>
    (cleaning ??= (async () => {
      await view?.stop().catch(() => undefined);
      sandbox?.cleanup();
    })());
  const onSignal = () => {
    say('\ninterrupted: cleaning up');
    void cleanup().then(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    sandbox = makeSandbox({ prefix: 'fscache-demo-' });
    const paths = derivePaths(sandbox.root, defaultConfig());
    say(`sandbox root ${sandbox.root}`);
    say(`  real tree  ${paths.realTree}  (this machine's /usr, bound read-only)`);
    say(`  usr link   ${paths.usrLink} -> ${fs.readlinkSync(paths.usrLink)}`);
    view = await startViewProcess(sandbox.root, paths.viewMount, paths.viewState);
    say(`view mounted at ${paths.viewMount} (pid ${view.child.pid})\n`);
    say(`${'program'.padEnd(44)} ${'1st run (fills)'.padStart(16)} ${'2nd run (flash)'.padStart(16)}`);
    let failures = 0;
    for (const program of DEMO_PROGRAMS) {
      const first = await runInChroot(sandbox, program.argv);
      // Let the background copies of this program's files land before the second run.
      await waitForFills(view);
      const second = await runInChroot(sandbox, program.argv);
      const fmt = (r: { ms: number; code: number }) => (r.code === 0 ? `${r.ms.toFixed(0)} ms` : `FAILED (${r.code})`);
      say(`${program.label.padEnd(44)} ${fmt(first).padStart(16)} ${fmt(second).padStart(16)}`);
      if (first.code !== 0 || second.code !== 0) {
        failures++;
        say(`  ${(second.stderr || first.stderr).trim().split('\n').slice(-3).join('\n  ')}`);
      }
    }
    await new Promise((r) => setTimeout(r, 2200)); // one index flush
    const state = view.state();
    await view.stop();
    view = undefined;
    const index = StoreIndex.open(paths.index, silentLogger, { readonly: true });
    const totals = index.totals();
    const top = index.all().sort((a, b) => b.hits - a.hits).slice(0, 5);
    index.close();
    say('');
    if (state) {
      say(`opens through the view: ${state.view.opens}; served from flash: ${state.view.hits}; from the real tree: ${state.view.misses}`);
      say(`bytes read from flash: ${state.view.bytesFromStore}; from the real tree: ${state.view.bytesFromReal}`);
      say(`requests that reached the view: ${Object.entries(state.requests).map(([k, v]) => `${k} ${v}`).join(', ')}`);
    }
    say(`flash store: ${totals.entries} files, ${(totals.bytes / 1048576).toFixed(1)} MiB, ${totals.hits} hits recorded in the index`);
    for (const e of top) say(`  ${String(e.hits).padStart(4)} hits  ${path.join('/usr', e.path)}`);
    say(failures ? `\n${failures} program(s) failed` : '\nall programs ran through the view; cleaning up');
    return failures ? 1 : 0;
  } finally {
    await cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** Waits until the view reports no fill in progress for a moment (bounded). */
async function waitForFills(view: ViewProcess): Promise<void> {
  const deadline = Date.now() + 10000;
  let last = -1;
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 300));
    const s = view.state();
    const fills = (s?.store?.fills ?? 0) + (s?.store?.fillFailures ?? 0);
    if (fills === last) return;
    last = fills;
  }
}
