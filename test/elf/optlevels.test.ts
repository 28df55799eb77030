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
import { announceSkip, buildLua, buildSqlite, buildZlib, FIXTURES, type OptLevel, REPO, runWith, tempDir } from './libs';

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
  if (!lua.ok) announceSkip(`Lua ${opt} tests`, lua.skip);
  (lua.ok ? describe : describe.skip)(`randomized Lua 5.4 ${opt}`, () => {
    if (!lua.ok) return;
    const out = tempDir(`lua${opt}`);
    const script = path.join(FIXTURES, 'workload.lua');
    const baseline = runWith(lua.dir, lua.lua, [script]);

    test('built at the level, baseline runs the workload', () => {
      expect(producerFlag(lua.lib)).toBe(opt);
      expect(baseline.status).toBe(0);
      expect(baseline.stdout).toContain('coroutine 385');
    });

    test.each(SEEDS)('seed %s: the workload prints the same output', (seed) => {
      const { dir, file, result } = randomizeInto(lua.lib, out, seed);
      expectRandomized(lua.lib, file, result, 500);
      expect(result.patch.jumpTableEntries).toBeGreaterThan(100);
      const r = runWith(dir, lua.lua, [script]);
      expect(r.status).toBe(0);
      expect(r.stdout).toBe(baseline.stdout);
    }, 60_000);
  });

  const sq = buildSqlite(opt);
  if (!sq.ok) announceSkip(`SQLite ${opt} tests`, sq.skip);
  (sq.ok ? describe : describe.skip)(`randomized SQLite ${opt}`, () => {
    if (!sq.ok) return;
    const out = tempDir(`sqlite${opt}`);
    const baseline = runWith(sq.dir, sq.driver, []);

    test('built at the level, baseline runs the workload', () => {
      expect(producerFlag(sq.lib)).toBe(opt);
      expect(baseline.status).toBe(0);
      expect(baseline.stdout).toContain('\nok\ndone');
    });

    test.each(SEEDS)('seed %s: the SQL workload gives identical output', (seed) => {
      const { dir, file, result } = randomizeInto(sq.lib, out, seed);
      expectRandomized(sq.lib, file, result, 1000);
      const r = runWith(dir, sq.driver, []);
      expect(r.status).toBe(0);
      expect(r.stdout).toBe(baseline.stdout);
    }, 120_000);
  });
});
