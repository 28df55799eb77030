/**
 * A process that mapped a file keeps the bytes it mapped until it exits: a library
 * replaced by rename (as every package upgrade does) while a program maps it through
 * the view. The library spans several pages, one function per 512 KiB, so each call
 * after the replacement faults in a page never read before (page cache dropped between
 * calls). Natively the program prints `1 1 1 1 1 1`; through the view it must too, and a
 * launch afterwards gets the new library. Run with FSCACHE_TEST_SESSION=libfuse2 for
 * the other session (the default is the kernel session).
 */
import { ChildProcessWithoutNullStreams, execFileSync, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createViewSandbox, fuseAvailable, ViewSandbox, waitFor } from './helpers/view-sandbox';

const skip = fuseAvailable();
const maybe = skip ? describe.skip : describe;
if (skip) console.warn(`replace-mapped tests skipped: ${skip}`);

const CALLS = 6;
/**
 * libfuse2's high-level API names nodes by path: old and new file share one kernel inode
 * and its page cache, so a launch while the old mapping lives may see pages of either
 * (not tested there); a holder of the old handle alone keeps the old bytes.
 */
const libfuse2 = process.env.FSCACHE_TEST_SESSION === 'libfuse2';
/** f0..f5 return VALUE, each followed by 512 KiB of padding: every call faults in a page of its own. */
const LIB_SOURCE = [
  ...Array.from({ length: CALLS }, (_, i) =>
    `__attribute__((noinline)) int f${i}(void) { return VALUE; }\n` +
    `__attribute__((used, noinline)) void pad${i}(void) { __asm__ volatile(".skip 524288, 0x90"); }\n`),
  `int (*const table[${CALLS}])(void) = { ${Array.from({ length: CALLS }, (_, i) => `f${i}`).join(', ')} };\n`,
  'int call(int i) { return table[i](); }\n',
].join('');
/** One call per line read from stdin, its value printed at once: the test decides when each call runs. */
const PROGRAM_SOURCE = `#include <stdio.h>
int call(int);
int main(void) {
  char line[16];
  for (int i = 0; i < ${CALLS}; i++) {
    if (!fgets(line, sizeof line, stdin)) return 3;
    printf("%d\\n", call(i));
    fflush(stdout);
  }
  return 0;
}
`;
const LIB = 'lib/libreplaced.so.1';
const PROGRAM = 'bin/replaced-caller';
/** What the program needs from the host's /usr, copied into the sandbox's real tree. */
const HOST_FILES = ['lib/x86_64-linux-gnu/libc.so.6', 'lib/x86_64-linux-gnu/ld-linux-x86-64.so.2'];

function dropCaches(): void {
  execFileSync('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches'], { timeout: 30000 });
}

/** Builds libreplaced.so.1 returning `value` into `out` (the same size for 1 and 2). */
function buildLib(work: string, value: number, out: string): void {
  const src = path.join(work, 'lib.c');
  fs.writeFileSync(src, LIB_SOURCE);
  execFileSync('gcc', ['-O1', '-fno-toplevel-reorder', '-fPIC', '-shared', `-DVALUE=${value}`, '-Wl,-soname,libreplaced.so.1', '-o', out, src], { timeout: 60000 });
}

/** Reads (view) READ requests so far, from the view's state file (both sessions' names). */
function reads(vs: ViewSandbox): number {
  const counts = vs.view!.state()?.requests ?? {};
  return (counts.READ ?? 0) + (counts.read ?? 0);
}

maybe('a library replaced by rename while a program maps it through the view', () => {
  let vs: ViewSandbox | undefined;
  let work: string | undefined;
  let child: ChildProcessWithoutNullStreams | undefined;
  afterEach(async () => {
    child?.kill('SIGKILL');
    child = undefined;
    await vs?.dispose();
    vs = undefined;
    if (work) fs.rmSync(work, { recursive: true, force: true });
    work = undefined;
  });

  test.each([
    ['read from the real file', false],
    ['read from its flash copy', true],
  ])('the running program keeps the old code (1 1 1 1 1 1), %s; a new launch gets the new library', async (_label, fromCopy) => {
    vs = createViewSandbox({ copy: true, config: 'access_flush_ms = 100\n' });
    const real = vs.paths.realTree;
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-replace-'));
    for (const rel of HOST_FILES) {
      fs.mkdirSync(path.dirname(path.join(real, rel)), { recursive: true });
      fs.copyFileSync(path.join('/usr', rel), path.join(real, rel));
    }
    fs.mkdirSync(path.join(real, 'lib64'));
    fs.symlinkSync('/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2', path.join(real, 'lib64', 'ld-linux-x86-64.so.2'));
    fs.mkdirSync(path.join(real, 'bin'));
    buildLib(work, 1, path.join(real, LIB));
    const v2 = path.join(work, 'libreplaced.so.1.v2');
    buildLib(work, 2, v2);
    expect(fs.statSync(v2).size).toBe(fs.statSync(path.join(real, LIB)).size);
    expect(fs.statSync(v2).size).toBeGreaterThan(CALLS * 512 * 1024);
    fs.writeFileSync(path.join(work, 'main.c'), PROGRAM_SOURCE);
    execFileSync('gcc', ['-O1', '-o', path.join(real, PROGRAM), path.join(work, 'main.c'), `-L${path.join(real, 'lib')}`, '-l:libreplaced.so.1', '-Wl,-rpath,/usr/lib'], { timeout: 60000 });
    await vs.startView();
    if (fromCopy) {
      // A first run makes the flash copy; the kernel then forgets the node, and the next run's reads come from the copy.
      const warm = await runWithInput(vs, '\n'.repeat(CALLS));
      expect(warm.stdout.trim().split('\n').join(' ')).toBe('1 1 1 1 1 1');
      expect(await waitFor(() => fs.existsSync(path.join(vs!.paths.store, LIB)), 20000, 50)).toBeGreaterThanOrEqual(0);
      dropCaches();
    }
    const bytesFromStore = () => vs!.view!.state()?.view.bytesFromStore ?? 0;
    const storeBefore = bytesFromStore();

    const [cmd, args] = vs.sandbox.chrootArgs(['/usr/' + PROGRAM]);
    child = spawn(cmd, args, { env: { PATH: '/usr/bin:/bin' } });
    const lines: string[] = [];
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d;
      lines.splice(0, lines.length, ...stdout.split('\n').filter(Boolean));
    });
    child.stderr.on('data', (d) => (stderr += d));
    // 'close', not 'exit': the last line may still be in the pipe when the process has exited.
    const exited = new Promise<number | null>((resolve) => child!.once('close', (code, signal) => resolve(code ?? (signal ? 128 : null))));
    let readsAfterReplace = 0;
    for (let i = 0; i < CALLS; i++) {
      if (i === 3) {
        // The upgrade: a new file renamed over the name, then time for the watcher to act on it.
        fs.copyFileSync(v2, path.join(real, 'lib', '.libreplaced.new'));
        fs.renameSync(path.join(real, 'lib', '.libreplaced.new'), path.join(real, LIB));
        await new Promise((r) => setTimeout(r, 1500));
        if (!libfuse2) {
          // A launch while the old program still maps the old library gets the new one: the
          // kernel session gives the new file a new node, with a page cache of its own.
          const r = await runWithInput(vs, '\n'.repeat(CALLS));
          expect(r.stdout.trim().split('\n').join(' ')).toBe('2 2 2 2 2 2');
        }
        readsAfterReplace = reads(vs);
      }
      dropCaches();
      child.stdin.write('\n');
      const ms = await waitFor(() => lines.length > i || child!.exitCode !== null || child!.signalCode !== null, 20000, 10);
      expect({ call: i, ms: ms >= 0, stderr }).toEqual({ call: i, ms: true, stderr: '' });
    }
    child.stdin.end();
    expect(await exited).toBe(0);
    expect(lines.join(' ')).toBe('1 1 1 1 1 1');
    // The calls after the replacement did fault pages in through the view (not from the page cache).
    await new Promise((r) => setTimeout(r, 300));
    expect(reads(vs)).toBeGreaterThan(readsAfterReplace);
    if (fromCopy) expect(bytesFromStore()).toBeGreaterThan(storeBefore);

    // A launch after the upgrade maps the new library.
    const r = await runWithInput(vs, '\n'.repeat(CALLS));
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    expect(r.stdout.trim().split('\n').join(' ')).toBe('2 2 2 2 2 2');
  });
});

/** The program in the chroot with `input` on stdin, bounded by a timeout. */
function runWithInput(vs: ViewSandbox, input: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const [cmd, args] = vs.sandbox.chrootArgs(['/usr/' + PROGRAM]);
  return new Promise((resolve) => {
    const c = spawn(cmd, args, { env: { PATH: '/usr/bin:/bin' }, timeout: 30000 });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d) => (stdout += d));
    c.stderr.on('data', (d) => (stderr += d));
    c.on('exit', (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr }));
    c.stdin.end(input);
  });
}

