/**
 * SQLite from the amalgamation shipped in node_modules/better-sqlite3/deps (no shell.c ships
 * there, so fixtures/sqlite_driver.c runs the SQL workload), randomized with several seeds:
 * every result row must be identical to the original library's.
 */
import { functionOrder, randomizeInto, SEEDS } from './helpers';
import { announceSkip, buildSqlite, runWith, tempDir } from './libs';

const sq = buildSqlite();
if (!sq.ok) announceSkip('SQLite tests', sq.skip);
const maybe = sq.ok ? describe : describe.skip;

maybe('randomized SQLite', () => {
  if (!sq.ok) return;
  const out = tempDir('sqlite');
  const baseline = runWith(sq.dir, sq.driver, []);

  test('baseline runs the workload', () => {
    expect(baseline.status).toBe(0);
    expect(baseline.stdout).toContain('\nok\ndone');
  });

  test.each(SEEDS)('seed %s: the SQL workload gives identical output', (seed) => {
    const { dir, file, result } = randomizeInto(sq.lib, out, seed);
    expect(result.units).toBeGreaterThan(1000);
    const r = runWith(dir, sq.driver, []);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(baseline.stdout);
    const before = functionOrder(sq.lib);
    const after = functionOrder(file);
    expect(after).not.toEqual(before);
    // Most functions changed their neighbour: not just a rotation of the same order.
    const nextBefore = new Map(before.map((n, i) => [n, before[i + 1]]));
    const same = after.filter((n, i) => nextBefore.get(n) === after[i + 1]).length;
    expect(same / after.length).toBeLessThan(0.05);
  }, 120_000);
});
