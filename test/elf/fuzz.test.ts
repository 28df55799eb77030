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

  test('a crafted 8 MB file with 170,000 aliases named by one huge string stays linear', () => {
    // Symbol table and string table moved to appended regions: every symbol is a FUNC alias at the
    // start of .text, and its name starts at a different offset inside one 4 MB unterminated-run
    // string. Quadratic name resolution or alias handling would take minutes.
    const shoff = Number(orig.readBigUInt64LE(40));
    const shnum = orig.readUInt16LE(60);
    const sec = (i: number) => ({ o: shoff + i * 64, type: orig.readUInt32LE(shoff + i * 64 + 4), link: orig.readUInt32LE(shoff + i * 64 + 40), addr: Number(orig.readBigUInt64LE(shoff + i * 64 + 16)), flags: Number(orig.readBigUInt64LE(shoff + i * 64 + 8)) });
    const all = Array.from({ length: shnum }, (_, i) => ({ i, ...sec(i) }));
    const symtab = all.find((x) => x.type === 2)!;
    const text = all.find((x) => (x.flags & 6) === 6 && x.type === 1 && x.addr > 0 && orig.readBigUInt64LE(x.o + 32) > 64n)!;
    const n = 170_000;
    const strSize = 4 << 20;
    const syms = Buffer.alloc(n * 24);
    for (let i = 1; i < n; i++) {
      syms.writeUInt32LE(i * 7 % (strSize - 1), i * 24);
      syms[i * 24 + 4] = 0x12; // GLOBAL FUNC
      syms.writeUInt16LE(text.i, i * 24 + 6);
      syms.writeBigUInt64LE(BigInt(text.addr), i * 24 + 8);
    }
    const strs = Buffer.alloc(strSize, 0x41);
    strs[strSize - 1] = 0;
    const b = Buffer.concat([orig, syms, strs]);
    b.writeBigUInt64LE(BigInt(orig.length), symtab.o + 24);
    b.writeBigUInt64LE(BigInt(syms.length), symtab.o + 32);
    b.writeBigUInt64LE(BigInt(orig.length + syms.length), shoff + symtab.link * 64 + 24);
    b.writeBigUInt64LE(BigInt(strSize), shoff + symtab.link * 64 + 32);
    const t0 = Date.now();
    expect(['ok', 'refused']).toContain(oneInput(b));
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  test('random bytes and tiny files are format errors with an offset', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (a) => {
      expect(() => readElf(a)).toThrow(ElfFormatError);
    }), { numRuns: 500 });
  });
});
