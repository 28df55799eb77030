/**
 * Fuzz: thousands of truncated, bit-flipped and crafted variants of a real randomizable library
 * (and of a host library) go through randomizeBytes and inspectBytes. Each must either produce a
 * verified image or fail with ElfRefusal / ElfFormatError — never another exception, a hang or an
 * unverified image. The longer run (100,000 inputs) is bench/fuzz-randomizer.ts.
 */
import fc from 'fast-check';
import * as fs from 'fs';
import { ElfFormatError, ElfRefusal, inspectBytes, randomizeBytes, readElf } from '../../elf';
import { announceSkip, buildSmall } from './libs';
import { applyMutation, mutationArb } from './mutate';

const small = buildSmall();
if (!small.ok) announceSkip('fuzz over the small library', small.skip);

/** Runs one input; returns 'ok' or 'refused', throws on anything else. */
export function oneInput(bytes: Buffer): 'ok' | 'refused' {
  const t0 = Date.now();
  try {
    inspectBytes(bytes);
    randomizeBytes(bytes, Buffer.from('f022', 'hex'));
    return 'ok';
  } catch (e) {
    if (e instanceof ElfRefusal || e instanceof ElfFormatError) return 'refused';
    throw e;
  } finally {
    // A hostile input must not make us spin: each one is processed in bounded time.
    if (Date.now() - t0 > 5000) throw new Error(`input took ${Date.now() - t0} ms`);
  }
}

(small.ok ? describe : describe.skip)('fuzzing the reader and the randomizer', () => {
  if (!small.ok) return;
  const orig = fs.readFileSync(small.lib);

  test('the unmutated library randomizes', () => {
    expect(oneInput(orig)).toBe('ok');
  });

  test('3000 mutated libraries: only verified images or clean refusals', () => {
    const counts = { ok: 0, refused: 0 };
    fc.assert(
      fc.property(mutationArb(orig.length), (m) => {
        counts[oneInput(applyMutation(orig, m))]++;
      }),
      { numRuns: 3000, seed: 0x5eed },
    );
    // eslint-disable-next-line no-console
    console.log(`fuzz: ${counts.ok} randomized and verified, ${counts.refused} refused`);
    expect(counts.refused).toBeGreaterThan(100);
  }, 120_000);

  test('1000 mutated host libraries: never randomized, never a crash', () => {
    const host = fs.readFileSync('/usr/lib/x86_64-linux-gnu/libz.so.1');
    fc.assert(fc.property(mutationArb(host.length), (m) => { expect(oneInput(applyMutation(host, m))).toBe('refused'); }), { numRuns: 1000, seed: 7 });
  }, 120_000);

  test('random bytes and tiny files are format errors with an offset', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (a) => {
      expect(() => readElf(a)).toThrow(ElfFormatError);
    }), { numRuns: 500 });
  });
});
