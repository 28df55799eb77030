/**
 * The unit finder keeps together what the code proves must stay together (assembly without
 * .size, unrelocated calls, fall-through), and refuses what it cannot account for (relative
 * pointers against a section symbol) instead of guessing.
 */
import * as fs from 'fs';
import { ElfRefusal, randomizeBytes } from '../../elf';
import { loadImage } from '../../elf/image';
import { findUnits } from '../../elf/units';
import { randomizeInto } from './helpers';
import { announceSkip, buildFixture, runWith, tempDir } from './libs';

const edge = buildFixture('edge', ['edge.c'], 'edge_main.c');
const relptr = buildFixture('edgerel', ['edge.c'], undefined, '-DRELPTR');
if (!edge.ok) announceSkip('edge fixture', edge.skip);
if (!relptr.ok) announceSkip('relative-pointer fixture', relptr.skip);

(edge.ok ? describe : describe.skip)('edge cases', () => {
  if (!edge.ok) return;

  test('assembly functions that call and fall into each other become one unit', () => {
    const plan = findUnits(loadImage(fs.readFileSync(edge.lib)));
    const unit = plan.units.find((u) => u.names.includes('edge_asm_outer'))!;
    expect(unit.names).toEqual(expect.arrayContaining(['edge_asm_outer', 'edge_asm_inner']));
    expect(unit.names).toContain('edge_asm_tail');
    expect(plan.joined.reasons.get('unrelocated reference between symbols')).toBeGreaterThan(0);
    expect(plan.joined.reasons.get('code falls through into the next symbol')).toBeGreaterThan(0);
  });

  test('randomized with several seeds, the program still computes the same result', () => {
    const out = tempDir('edge');
    for (const seed of ['01', '02', '03', '04', '05']) {
      const { dir } = randomizeInto(edge.lib, out, seed);
      const r = runWith(dir, edge.main!, []);
      expect(r.stdout).toBe('edge 64\n');
      expect(r.status).toBe(0);
    }
  });

  (relptr.ok ? test : test.skip)('a relative pointer against a section symbol is refused with its offset', () => {
    if (!relptr.ok) return;
    let err: unknown;
    try { randomizeBytes(fs.readFileSync(relptr.lib), Buffer.from('01', 'hex')); } catch (e) { err = e; }
    expect(err).toBeInstanceOf(ElfRefusal);
    expect((err as Error).message).toMatch(/PC-relative reference to code in \.rodata with no known base at 0x[0-9a-f]+/);
  });
});
