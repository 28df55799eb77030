/**
 * The alignment each unit needs, from evidence rather than from where the unit happens to sit.
 *
 * The linker puts an input section at the first address past the previous one that is a multiple
 * of the section's alignment, and leaves the bytes between as padding. So:
 *  - padding of g > 0 bytes in front of a unit proves an alignment of at least the smallest power
 *    of two above g (the linker, or an assembler `.p2align`, skipped g bytes to reach it);
 *  - no padding proves nothing about that unit; it gets the alignment the library's units show
 *    (the largest power of two dividing 9 in 10 unit starts: 16 for GCC -O2, 1 for a packed -Os or
 *    -O1 build), never the alignment its own address shows by chance;
 *  - never more than .text's sh_addralign (the largest alignment any input section asked for).
 * Taking the alignment from the address alone made a packed -Os library and one 64-aligned
 * assembly function (every unit at a multiple of 64 then "needed" 64) unplaceable.
 *
 * On x86-64 code alignment is a matter of speed, except for data kept in .text and read with an
 * aligned access (movdqa, a legacy-SSE memory operand, vmovdqa): there a wrong alignment faults or,
 * worse, reads other bytes. So a unit that holds bytes reached by a RIP-relative memory operand, a
 * `lea` or a data word (anything but a function's entry) keeps each such address's alignment: its
 * new start must equal its old start modulo that alignment (the `align` of a unit is always that
 * congruence, start + k * align; for units that start on a multiple of it, plain alignment).
 */
import { Code } from 'iced-x86';
import { DecodedRange, REF_BRANCH } from './disasm';
import { Image, inText, relocTarget } from './image';
import { R_X86_64_64, SHF_ALLOC, SHF_EXECINSTR } from './types';

/** What the alignment pass reads of a unit. */
export interface UnitExtent {
  readonly start: number;
  /** End of its copied bytes; [coreEnd, next unit's start) is proven padding. */
  readonly coreEnd: number;
}

export interface Alignments {
  /** Alignment each unit needs (a power of two), by unit index: new start ≡ start (mod align). */
  readonly align: number[];
  /** The alignment 9 in 10 unit starts show (what a unit with no padding in front of it gets). */
  readonly common: number;
  /** Units whose alignment is kept because bytes in them are read as data. */
  readonly dataKept: number;
}

/** Largest power of two dividing `a`, at most `cap`. */
function addressAlign(a: number, cap: number): number {
  let p = 1;
  while (p < cap && a % (p * 2) === 0) p *= 2;
  return p;
}

/**
 * The alignment the compiler gave the library's functions: the largest power of two that at least
 * 9 in 10 unit starts are multiples of. Not all: one assembly function without `.p2align` (an odd
 * address) would otherwise take GCC's 16 from every C function. A packed -Os build has half its
 * starts even, so 1; GCC -O2 has 16.
 */
function commonAlignment(units: readonly UnitExtent[], cap: number): number {
  let p = 1;
  while (p < cap && units.filter((u) => u.start % (p * 2) === 0).length * 10 >= units.length * 9) p *= 2;
  return p;
}

/** Index of the unit holding `addr` (extents sorted by start, the first at or below `addr`). */
function extentAt(units: readonly UnitExtent[], addr: number): number {
  let lo = 0;
  let hi = units.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (units[mid].start <= addr) lo = mid; else hi = mid - 1;
  }
  return lo;
}

/**
 * Addresses in .text used as data (not as a function entry), by the unit holding them: RIP-relative
 * memory operands and `lea`s from any code in .text, and absolute words (R_X86_64_64) in
 * allocated data. Jump-table entries (PC32 words) name code labels and are not counted.
 */
function dataAddresses(img: Image, d: DecodedRange, units: readonly UnitExtent[], isEntry: (a: number) => boolean): Map<number, number[]> {
  const byUnit = new Map<number, number[]>();
  const add = (t: number, isLea: boolean) => {
    // `lea func(%rip)` and a pointer word take a function's address: a call target, not data.
    if (isLea && isEntry(t)) return;
    const j = extentAt(units, t);
    const l = byUnit.get(j) ?? [];
    l.push(t);
    byUnit.set(j, l);
  };
  for (let r = 0; r < d.refs.length; r++) {
    if (d.refKind[r] === REF_BRANCH) continue;
    const t = d.target[r];
    if (inText(img, t)) add(t, d.code[d.refs[r]] === Code.Lea_r64_m || d.code[d.refs[r]] === Code.Lea_r32_m);
  }
  for (const [secIndex, relocs] of img.staticRelocs) {
    const sec = img.elf.sections[secIndex];
    if (!(sec.sh_flags & SHF_ALLOC) || (sec.sh_flags & SHF_EXECINSTR)) continue;
    for (let q = 0; q < relocs.count; q++) {
      if (relocs.r_type[q] !== R_X86_64_64) continue;
      const t = relocTarget(img, relocs, q);
      if (t !== undefined && inText(img, t)) add(t, true);
    }
  }
  return byUnit;
}

/** `isEntry(a)`: a function symbol starts at `a` (an address taken there is a function pointer). */
export function unitAlignments(img: Image, d: DecodedRange, units: readonly UnitExtent[], isEntry: (a: number) => boolean): Alignments {
  const cap = Math.max(1, Math.min(img.text.sh_addralign || 1, 4096));
  const common = commonAlignment(units, cap);
  const align = units.map((u, i) => {
    const gap = i === 0 ? 0 : u.start - units[i - 1].coreEnd;
    // A unit off the common alignment (assembly without .p2align) is not held to it.
    const usual = Math.min(common, addressAlign(u.start, cap));
    if (gap === 0) return usual;
    let p = 1;
    while (p <= gap) p *= 2;
    // Padding no power of two up to .text's alignment explains (not alignment padding, as far as
    // we can tell): keep what the address shows, as before.
    if (p > cap || u.start % p !== 0) return addressAlign(u.start, cap);
    return Math.max(p, usual);
  });
  const data = dataAddresses(img, d, units, isEntry);
  for (const [j, addrs] of data) {
    // Safety, not speed: each data address keeps its alignment (capped by .text's, the most its
    // input section could have asked), so the unit moves by a multiple of the largest.
    for (const t of addrs) align[j] = Math.max(align[j], addressAlign(t, cap));
  }
  return { align, common, dataKept: data.size };
}
