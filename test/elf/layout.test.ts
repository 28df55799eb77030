/**
 * The layout fits the original .text extent for every seed tried (holes left by alignment are
 * filled), and the permutation stream is deterministic and unbiased enough to matter.
 */
import * as fs from 'fs';
import { prepareLibrary } from '../../elf';
import { entropyBits, permutation, planLayout, ShuffleRng } from '../../elf/layout';
import { announceSkip, buildCxx, buildLua, buildSqlite } from './libs';

test('the stream is deterministic per seed and input, and different across them', () => {
  const a = permutation(50, new ShuffleRng(Buffer.from('01', 'hex'), Buffer.from('lib')));
  const b = permutation(50, new ShuffleRng(Buffer.from('01', 'hex'), Buffer.from('lib')));
  const c = permutation(50, new ShuffleRng(Buffer.from('02', 'hex'), Buffer.from('lib')));
  const d = permutation(50, new ShuffleRng(Buffer.from('01', 'hex'), Buffer.from('other lib')));
  expect(a).toEqual(b);
  expect(a).not.toEqual(c);
  expect(a).not.toEqual(d);
  expect([...a].sort((x, y) => x - y)).toEqual(Array.from({ length: 50 }, (_, i) => i));
});

test('below(n) is close to uniform (chi-square over 60,000 draws)', () => {
  const rng = new ShuffleRng(Buffer.from('c4', 'hex'), Buffer.from('x'));
  const n = 12;
  const counts = new Array(n).fill(0);
  for (let i = 0; i < 60000; i++) counts[rng.below(n)]++;
  const e = 60000 / n;
  const chi = counts.reduce((s, c) => s + ((c - e) ** 2) / e, 0);
  expect(chi).toBeLessThan(40); // 11 degrees of freedom: p < 1e-4 above ~37
});

test('entropy bits are log2(n!)', () => {
  expect(entropyBits(1)).toBe(0);
  expect(entropyBits(4)).toBeCloseTo(Math.log2(24));
});

const libs = [['Lua', buildLua()], ['SQLite', buildSqlite()], ['C++ fixture', buildCxx()]] as const;
for (const [name, b] of libs) {
  if (!b.ok) announceSkip(`${name} layout test`, b.skip);
  (b.ok ? test : test.skip)(`${name}: 200 seeds all fit the original .text, almost always at the first draw`, () => {
    if (!b.ok) return;
    const input = fs.readFileSync(b.lib);
    const p = prepareLibrary(input);
    let draws = 0;
    for (let i = 0; i < 200; i++) {
      const l = planLayout(p.plan, p.img.textStart, p.img.textEnd, new ShuffleRng(Buffer.from([i, 7]), input.subarray(0, 4096)));
      expect(l.usedEnd).toBeLessThanOrEqual(p.img.textEnd);
      draws += l.draws;
    }
    expect(draws / 200).toBeLessThan(4);
  });
}
