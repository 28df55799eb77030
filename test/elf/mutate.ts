/**
 * Hostile-input generators for the fuzz test and the long fuzz bench: truncations, bit flips
 * biased towards the tables a reader trusts, and crafted header/section fields (huge counts,
 * offsets past the end, self-referencing links, overlapping sections).
 */
import fc from 'fast-check';

const u16 = (b: Buffer, o: number, v: number) => { if (o + 2 <= b.length) b.writeUInt16LE(v & 0xffff, o); };
const u32 = (b: Buffer, o: number, v: number) => { if (o + 4 <= b.length) b.writeUInt32LE(v >>> 0, o); };
const u64 = (b: Buffer, o: number, v: bigint) => { if (o + 8 <= b.length) b.writeBigUInt64LE(BigInt.asUintN(64, v), o); };

export type Mutation =
  | { kind: 'truncate'; at: number }
  | { kind: 'flip'; bits: number[] }
  | { kind: 'shdr'; section: number; field: number; value: bigint }
  | { kind: 'ehdr'; field: number; value: bigint }
  | { kind: 'phdr'; segment: number; field: number; value: bigint }
  | { kind: 'bytes'; at: number; data: number[] };

const interesting = [0n, 1n, 2n, 7n, 8n, 0x18n, 0x40n, 0xffn, 0xffffn, 0xffff_ffffn, 0x7fff_ffffn, 0x8000_0000n, 1n << 53n, (1n << 64n) - 1n, (1n << 63n)];

/** Arbitrary over mutations of a file of `size` bytes. */
export function mutationArb(size: number): fc.Arbitrary<Mutation> {
  const value = fc.oneof(fc.constantFrom(...interesting), fc.bigInt({ min: 0n, max: BigInt(size * 2) }));
  return fc.oneof(
    fc.record({ kind: fc.constant('truncate' as const), at: fc.nat({ max: size }) }),
    fc.record({ kind: fc.constant('flip' as const), bits: fc.array(fc.nat({ max: size * 8 - 1 }), { minLength: 1, maxLength: 16 }) }),
    fc.record({ kind: fc.constant('shdr' as const), section: fc.nat({ max: 60 }), field: fc.nat({ max: 9 }), value }),
    fc.record({ kind: fc.constant('ehdr' as const), field: fc.nat({ max: 13 }), value }),
    fc.record({ kind: fc.constant('phdr' as const), segment: fc.nat({ max: 12 }), field: fc.nat({ max: 7 }), value }),
    fc.record({ kind: fc.constant('bytes' as const), at: fc.nat({ max: size - 1 }), data: fc.array(fc.nat({ max: 255 }), { minLength: 1, maxLength: 32 }) }),
  );
}

// Field offsets inside Elf64_Shdr / Elf64_Ehdr / Elf64_Phdr with their widths.
const SHDR: [number, number][] = [[0, 4], [4, 4], [8, 8], [16, 8], [24, 8], [32, 8], [40, 4], [44, 4], [48, 8], [56, 8]];
const EHDR: [number, number][] = [[16, 2], [18, 2], [20, 4], [24, 8], [32, 8], [40, 8], [48, 4], [52, 2], [54, 2], [56, 2], [58, 2], [60, 2], [62, 2], [4, 1]];
const PHDR: [number, number][] = [[0, 4], [4, 4], [8, 8], [16, 8], [24, 8], [32, 8], [40, 8], [48, 8]];

function put(b: Buffer, off: number, width: number, v: bigint): void {
  if (width === 1) { if (off < b.length) b[off] = Number(v & 0xffn); } else if (width === 2) u16(b, off, Number(v & 0xffffn));
  else if (width === 4) u32(b, off, Number(v & 0xffffffffn)); else u64(b, off, v);
}

export function applyMutation(orig: Buffer, m: Mutation): Buffer {
  if (m.kind === 'truncate') return Buffer.from(orig.subarray(0, m.at));
  const b = Buffer.from(orig);
  const shoff = b.length >= 64 ? Number(b.readBigUInt64LE(40)) : 0;
  const phoff = b.length >= 64 ? Number(b.readBigUInt64LE(32)) : 0;
  switch (m.kind) {
    case 'flip': for (const bit of m.bits) if (bit >> 3 < b.length) b[bit >> 3] ^= 1 << (bit & 7); break;
    case 'shdr': { const [o, w] = SHDR[m.field]; put(b, shoff + m.section * 64 + o, w, m.value); break; }
    case 'ehdr': { const [o, w] = EHDR[m.field]; put(b, o, w, m.value); break; }
    case 'phdr': { const [o, w] = PHDR[m.field]; put(b, phoff + m.segment * 56 + o, w, m.value); break; }
    case 'bytes': m.data.forEach((x, i) => { if (m.at + i < b.length) b[m.at + i] = x; }); break;
  }
  return b;
}
