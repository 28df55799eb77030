/**
 * zlib 1.2.13 from Debian's source package, built with -ffunction-sections and --emit-relocs,
 * randomized with several seeds; zlib's own `example` and `minigzip` round trips run against
 * each randomized libz.so.1 through LD_LIBRARY_PATH.
 */
import * as fs from 'fs';
import * as path from 'path';
import { prepareLibrary, randomizeBytes, randomizePrepared } from '../../elf';
import { expectZlibWorks, functionOrder, randomizeInto, SEEDS } from './helpers';
import { announceSkip, buildZlib, runWith, tempDir } from './libs';

const z = buildZlib();
if (!z.ok) announceSkip('zlib tests', z.skip);
const maybe = z.ok ? describe : describe.skip;

maybe('randomized zlib', () => {
  if (!z.ok) return;
  const out = tempDir('zlib');
  const payload = Buffer.concat([fs.readFileSync(path.join(__dirname, '..', '..', 'package-lock.json')), Buffer.alloc(70000, 7), fs.readFileSync(z.lib)]);

  test('the original passes its own tests (baseline)', () => {
    const r = runWith(z.dir, z.example, []);
    expect(r.status).toBe(0);
  });

  test.each(SEEDS)('seed %s: example passes and minigzip round-trips', (seed) => {
    const { dir, file, result } = randomizeInto(z.lib, out, seed);
    expect(result.units).toBeGreaterThan(100);
    expectZlibWorks(dir, z, payload);
    // The function order really changed.
    expect(functionOrder(file)).not.toEqual(functionOrder(z.lib));
    expect(new Set(functionOrder(file))).toEqual(new Set(functionOrder(z.lib)));
  });

  test('different seeds give different orders; same seed gives the same bytes', () => {
    const input = fs.readFileSync(z.lib);
    const a = randomizeBytes(input, Buffer.from('01', 'hex'));
    const b = randomizeBytes(input, Buffer.from('01', 'hex'));
    const c = randomizeBytes(input, Buffer.from('02', 'hex'));
    expect(Buffer.from(a.bytes).equals(Buffer.from(b.bytes))).toBe(true);
    expect(a.layout.order).not.toEqual(c.layout.order);
    expect(Buffer.from(a.bytes).equals(Buffer.from(c.bytes))).toBe(false);
  });

  test('a prepared library gives the same bytes per seed as a cold run, with either verifier mode', () => {
    const input = fs.readFileSync(z.lib);
    const prep = prepareLibrary(input);
    for (const seed of ['03', '04']) {
      const cold = randomizeBytes(input, Buffer.from(seed, 'hex'));
      const warm = randomizePrepared(prep, Buffer.from(seed, 'hex'), { verify: 'fields' });
      expect(Buffer.from(warm.bytes).equals(Buffer.from(cold.bytes))).toBe(true);
      expect(warm.verify.pcRelOperands).toBe(cold.verify.pcRelOperands);
    }
  });

  test('the randomized output is not randomizable again (its static relocations are stripped)', () => {
    const r = randomizeBytes(fs.readFileSync(z.lib), Buffer.from('09', 'hex'));
    expect(() => randomizeBytes(Buffer.from(r.bytes))).toThrow(/no static relocations/);
  });

  test('output keeps segments and the loadable size; debug info is stripped and build-id replaced', () => {
    const input = fs.readFileSync(z.lib);
    const r = randomizeBytes(input, Buffer.from('0a', 'hex'));
    expect(r.write.droppedSections).toContain('.debug_info');
    expect(r.write.droppedSections).toContain('.rela.text');
    expect(r.write.buildIdReplaced).toBe(true);
    expect(r.entropyBits).toBeGreaterThan(500);
  });
});
