/**
 * zlib, Lua 5.4 and SQLite built at -Os and at -O1 in place of -O2 (issue 16: packed layouts whose
 * unit addresses prove no alignment), randomized with two seeds each and checked as the -O2 suites
 * check them: zlib's `example` and a `minigzip` round trip, Lua's workload and SQLite's SQL workload
 * print exactly what they print with the original library. The randomizer verifies each image
 * (verify.ts, 'decode') before writing it; a refusal fails the test with its reason.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import type { RandomizeResult } from '../../elf';
import { expectZlibWorks, functionOrder, randomizeInto } from './helpers';
import { announceSkip, type Built, buildLua, buildSqlite, buildZlib, FIXTURES, type OptLevel, REPO, runWith, tempDir } from './libs';

type RunResult = ReturnType<typeof runWith>;

const LEVELS: OptLevel[] = ['-Os', '-O1'];
const SEEDS = ['01', 'c0ffee'];

/** The optimisation flag in the library's DWARF producer string (the build really used it). */
function producerFlag(lib: string): string {
  const out = execFileSync('sh', ['-c', `readelf --debug-dump=info '${lib}' | grep -m1 DW_AT_producer`], { timeout: 60_000 }).toString();
  return / (-O[0-9s])\b/.exec(out)?.[1] ?? `none in: ${out.trim()}`;
}

/** What every randomized image must show: verified, every unit moved, the order changed. */
function expectRandomized(lib: string, file: string, result: RandomizeResult, minUnits: number): void {
  expect(result.units).toBeGreaterThan(minUnits);
  expect(result.verify.instructions).toBeGreaterThan(0);
  expect(result.verify.pcRelOperands).toBeGreaterThan(0);
  expect(result.layout.unmoved).toBe(0);
  const before = functionOrder(lib);
  const after = functionOrder(file);
  expect(after).not.toEqual(before);
  expect(new Set(after)).toEqual(new Set(before));
}

/**
 * A library whose program's output must not change: built at `opt`, the original runs it (printing
 * `marker`), and with each seed the randomized image prints exactly what the original printed.
 */
function workloadSuite(name: string, opt: OptLevel, b: Built<{ dir: string; lib: string }>, program: ((dir: string) => RunResult) | undefined,
  marker: string, minUnits: number, timeoutMs: number, more?: (result: RandomizeResult) => void): void {
  if (!b.ok) announceSkip(`${name} tests`, b.skip);
  (b.ok && program ? describe : describe.skip)(`randomized ${name}`, () => {
    if (!b.ok || !program) return;
    const out = tempDir(name.replace(/\W+/g, '-'));
    const baseline = program(b.dir);

    test('built at the level, baseline runs the workload', () => {
      expect(producerFlag(b.lib)).toBe(opt);
      expect(baseline.status).toBe(0);
      expect(baseline.stdout).toContain(marker);
    });

    test.each(SEEDS)('seed %s: the workload prints the same output', (seed) => {
      const { dir, file, result } = randomizeInto(b.lib, out, seed);
      expectRandomized(b.lib, file, result, minUnits);
      more?.(result);
      const r = program(dir);
      expect(r.status).toBe(0);
      expect(r.stdout).toBe(baseline.stdout);
    }, timeoutMs);
  });
}

describe.each(LEVELS)('libraries built at %s', (opt) => {
  const z = buildZlib(opt);
  if (!z.ok) announceSkip(`zlib ${opt} tests`, z.skip);
  (z.ok ? describe : describe.skip)(`randomized zlib ${opt}`, () => {
    if (!z.ok) return;
    const out = tempDir(`zlib${opt}`);
    const payload = Buffer.concat([fs.readFileSync(path.join(REPO, 'package-lock.json')), Buffer.alloc(70000, 7), fs.readFileSync(z.lib)]);

    test('built at the level, the original passes its own tests (baseline)', () => {
      expect(producerFlag(z.lib)).toBe(opt);
      expect(runWith(z.dir, z.example, []).status).toBe(0);
    });

    test.each(SEEDS)('seed %s: example passes and minigzip round-trips', (seed) => {
      const { dir, file, result } = randomizeInto(z.lib, out, seed);
      expectRandomized(z.lib, file, result, 100);
      expectZlibWorks(dir, z, payload);
    });
  });

  const lua = buildLua(opt);
  const script = path.join(FIXTURES, 'workload.lua');
  workloadSuite(`Lua 5.4 ${opt}`, opt, lua, lua.ok ? (dir) => runWith(dir, lua.lua, [script]) : undefined, 'coroutine 385', 500, 60_000,
    (result) => expect(result.patch.jumpTableEntries).toBeGreaterThan(100));

  const sq = buildSqlite(opt);
  workloadSuite(`SQLite ${opt}`, opt, sq, sq.ok ? (dir) => runWith(dir, sq.driver, []) : undefined, '\nok\ndone', 1000, 120_000);
});
