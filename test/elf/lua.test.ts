/**
 * Lua 5.4 from Debian's source package (liblua5.4.so.0 built with the randomization flags, the
 * `lua` interpreter linked against it), randomized with several seeds; a substantial workload
 * (fixtures/workload.lua) must print the same bytes as with the original library. Lua's own
 * test suite is a separate upstream tarball that Debian does not ship, hence the workload.
 */
import * as path from 'path';
import { functionOrder, randomizeInto, SEEDS } from './helpers';
import { announceSkip, buildLua, FIXTURES, runWith, tempDir } from './libs';

const lua = buildLua();
if (!lua.ok) announceSkip('Lua tests', lua.skip);

(lua.ok ? describe : describe.skip)('randomized Lua 5.4', () => {
  if (!lua.ok) return;
  const out = tempDir('lua');
  const script = path.join(FIXTURES, 'workload.lua');
  const baseline = runWith(lua.dir, lua.lua, [script]);

  test('baseline runs the workload', () => {
    expect(baseline.status).toBe(0);
    expect(baseline.stdout).toContain('coroutine 385');
  });

  test.each(SEEDS)('seed %s: the workload prints the same output', (seed) => {
    const { dir, file, result } = randomizeInto(lua.lib, out, seed);
    expect(result.units).toBeGreaterThan(500);
    expect(result.patch.jumpTableEntries).toBeGreaterThan(500);
    const r = runWith(dir, lua.lua, [script]);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(baseline.stdout);
    expect(functionOrder(file)).not.toEqual(functionOrder(lua.lib));
  });
});
