/**
 * A C++ library of our own (fixtures/thrower.cc + interp.c) that throws exceptions across its
 * own functions, keeps code addresses in data (function-pointer table, computed-goto labels,
 * switch jump tables) and names its frames with backtrace(). Randomized with several seeds, its
 * test program must pass unchanged; gdb must name the right functions in a randomized frame.
 */
import { execFileSync } from 'child_process';
import { functionOrder, randomizeInto, SEEDS } from './helpers';
import { announceSkip, buildCxx, runWith, tempDir } from './libs';

const cxx = buildCxx();
if (!cxx.ok) announceSkip('C++ library tests', cxx.skip);
const maybe = cxx.ok ? describe : describe.skip;

function hasGdb(): boolean {
  try {
    execFileSync('gdb', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

maybe('randomized C++ library with exceptions', () => {
  if (!cxx.ok) return;
  const out = tempDir('cxx');
  const baseline = runWith(cxx.dir, cxx.test, []);

  test('baseline passes', () => {
    expect(baseline.stdout).toContain('ALL OK');
    expect(baseline.status).toBe(0);
  });

  test.each(SEEDS)('seed %s: exceptions unwind through randomized frames, backtrace() names them', (seed) => {
    const { dir, file } = randomizeInto(cxx.lib, out, seed);
    const r = runWith(dir, cxx.test, []);
    expect(r.stdout).toContain('caught 100');
    expect(r.stdout).toContain('unwound out of library: yes');
    expect(r.stdout).toMatch(/thr_bt_leaf\+0x[0-9a-f]+\)[^\n]*\n[^\n]*thr_bt_middle\+0x[0-9a-f]+\)[^\n]*\n[^\n]*thr_backtrace\+/);
    expect(r.stdout).toContain('ALL OK');
    expect(r.status).toBe(0);
    // Same results from the computed-goto interpreter and the function-pointer table.
    expect(r.stdout.match(/interp \d+ dispatch \d+ mix \d+ tls \d+/)![0]).toBe(baseline.stdout.match(/interp \d+ dispatch \d+ mix \d+ tls \d+/)![0]);
    expect(r.stdout).toContain(dir); // the randomized copy was the one loaded
    expect(functionOrder(file)).not.toEqual(functionOrder(cxx.lib));
  });

  (hasGdb() ? test : test.skip)('gdb names the right functions in a backtrace through the randomized library', () => {
    const { dir } = randomizeInto(cxx.lib, out, 'abcdef');
    const bt = execFileSync('gdb', [
      '-nx', '-batch', '-iex', 'set debuginfod enabled off', '-ex', `set environment LD_LIBRARY_PATH=${dir}`,
      // Stop in main first so that the library is loaded and the breakpoint lands on the function, not its PLT stub.
      '-ex', 'break main', '-ex', 'run', '-ex', 'break thr::level4', '-ex', 'continue', '-ex', 'bt', cxx.test,
    ], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 }).toString();
    const frames = bt.split('\n').filter((l) => /^#\d+/.test(l));
    // "#1  0x... in thr::level3(int) () from ..." or "#0  thr::level4(int) () ..." -> "thr::level3"
    const names = frames.map((l) => (/^#\d+\s+(?:0x[0-9a-f]+ in )?([A-Za-z_][\w:]*)/.exec(l) ?? [])[1]);
    expect(names.slice(0, 5)).toEqual(['thr::level4', 'thr::level3', 'thr::level2', 'thr::level1', 'thr_run']);
    expect(bt).toContain(dir);
  });
});
