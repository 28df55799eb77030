/**
 * Phase 2: find the movable units of .text.
 *
 * Input-section boundaries are gone after linking, so units are rebuilt from FUNC symbols: every
 * FUNC/IFUNC symbol address in .text starts an "atom" that runs to the next one. Atoms are then
 * joined into units whenever the code proves they must stay together — never guessed:
 *  - a sized symbol that runs past the next atom start;
 *  - an atom without size information whose last instruction can fall through;
 *  - a PC-relative operand between two atoms with no relocation to re-apply it
 *    (crtbeginS.o's deregister_tm_clones / __do_global_dtors_aux / frame_dummy call each other so);
 *  - an FDE whose range covers more than one atom.
 * A reference that cannot be re-applied and cannot be kept by joining is a refusal.
 */
import { Code } from 'iced-x86';
import { CODE_INVALID, decodePieces, decodeRange, DecodedRange, F_PADDING, F_TERMINATOR, REF_BRANCH } from './disasm';
import { Alignments, unitAlignments } from './alignment';
import { ElfRefusal } from './errors';
import { Image, inText } from './image';
import { RelaTable, sectionData } from './reader';
import {
  relocTypeName, R_X86_64_DTPOFF32, R_X86_64_NONE, R_X86_64_SIZE32, R_X86_64_SIZE64, R_X86_64_TLSDESC_CALL,
  R_X86_64_TPOFF32, STT_FUNC, STT_GNU_IFUNC, R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_GOTPCREL,
  R_X86_64_GOTPCRELX, R_X86_64_REX_GOTPCRELX, R_X86_64_GOTPC32, R_X86_64_GOTTPOFF, R_X86_64_TLSGD,
  R_X86_64_TLSLD, R_X86_64_GOTPC32_TLSDESC,
} from './types';

/**
 * Relocation types accepted on a PC-relative operand in code: their field holds target − P
 * (a function, the PLT, the GOT or a GOT slot for TLS), which is re-applied from the decoded
 * operand. ld rewrites relaxed GOTPCRELX sites to PC32 and keeps PLT32 on calls made direct.
 */
const PC_RELATIVE_CODE_RELOCS = new Set([
  R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_GOTPCREL, R_X86_64_GOTPCRELX, R_X86_64_REX_GOTPCRELX, R_X86_64_GOTPC32,
  R_X86_64_GOTTPOFF, R_X86_64_TLSGD, R_X86_64_TLSLD, R_X86_64_GOTPC32_TLSDESC,
]);

/** Relocation types in code that carry no PC-relative value and need nothing when code moves. */
const POSITION_FREE_CODE_RELOCS = new Set([R_X86_64_NONE, R_X86_64_TPOFF32, R_X86_64_DTPOFF32, R_X86_64_SIZE32, R_X86_64_SIZE64, R_X86_64_TLSDESC_CALL]);

export interface Atom {
  readonly start: number;
  /** Start of the next atom (or end of .text). */
  readonly end: number;
  /** End of the bytes that belong to the code (trailing padding excluded when it is provably padding). */
  coreEnd: number;
  /** Its instructions: indexes [first, last) of the plan's `code`. */
  readonly first: number;
  readonly last: number;
  readonly names: string[];
}

export interface Unit {
  readonly index: number;
  readonly start: number;
  readonly end: number;
  /** Bytes [start, coreEnd) are copied; the rest is alignment padding. */
  readonly coreEnd: number;
  /**
   * The unit's new start must equal its start modulo this power of two (see alignment.ts: from the
   * padding in front of it, and kept where bytes in it are read as data).
   */
  readonly align: number;
  /** Its copied instructions (those in [start, coreEnd)): indexes [first, coreLast) of the plan's `code`. */
  readonly first: number;
  readonly coreLast: number;
  readonly atoms: Atom[];
  readonly names: string[];
}

export interface CodeRef {
  /** Address of the instruction. */
  readonly ip: number;
  readonly len: number;
  readonly fieldOff: number;
  readonly target: number;
}

export interface UnitPlan {
  /** The decoded .text, in address order (decoding restarted at every atom start). */
  readonly code: DecodedRange;
  readonly units: Unit[];
  /** Unit start addresses, sorted (for binary search). */
  readonly starts: Float64Array;
  /** Number of atoms joined into another atom's unit, and the joins by reason (for `inspect`). */
  readonly joined: { atoms: number; reasons: Map<string, number> };
  /** RIP-relative `lea` targets outside .text, by target address -> unit indexes (jump-table bases). */
  readonly leaBases: Map<number, Set<number>>;
  /** PC-relative operands in other executable sections that reach into .text (all relocated). */
  readonly otherExecRefs: CodeRef[];
  /** Decoded other executable sections, for the verifier. */
  readonly otherExecDecoded: DecodedRange[];
  /** What the alignment pass found (for `inspect`): see alignment.ts. */
  readonly alignment: { readonly common: number; readonly dataKept: number };
}

export function unitIndexAt(plan: UnitPlan, addr: number): number {
  const s = plan.starts;
  let lo = 0;
  let hi = s.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (s[mid] <= addr) lo = mid; else hi = mid - 1;
  }
  return lo;
}

/** Relocation type by offset (the last one in the table when several share an offset). */
function fieldSet(t: RelaTable): Map<number, number> {
  const m = new Map<number, number>();
  for (let q = 0; q < t.count; q++) m.set(t.r_offset[q], t.r_type[q]);
  return m;
}

const NO_RELOCS: RelaTable = {
  count: 0, fileOffset: 0, r_offset: new Float64Array(0), r_type: new Uint32Array(0), r_sym: new Uint32Array(0), r_addend: new Float64Array(0),
};

/** Atom starts and what the symbol tables say of them (sizes, and a few names for reports). */
interface AtomStarts {
  /** Sorted: every FUNC/IFUNC symbol address in .text, and .text's start. */
  readonly starts: number[];
  /** start -> largest st_size of a sized symbol there. */
  readonly sized: Map<number, number>;
  readonly names: Map<number, string[]>;
}

function atomStarts(img: Image): AtomStarts {
  const { textStart, textEnd, text } = img;
  const sized = new Map<number, number>();
  const names = new Map<number, string[]>();
  const namesLooked = new Map<number, number>();
  const startSet = new Set<number>([textStart]);
  for (const table of [img.symtab, img.dynsym]) {
    if (!table) continue;
    for (const s of table.symbols) {
      if (s.type !== STT_FUNC && s.type !== STT_GNU_IFUNC) continue;
      if (s.st_shndx !== text.index || s.st_value < textStart || s.st_value >= textEnd) continue;
      startSet.add(s.st_value);
      if (s.st_size > 0) sized.set(s.st_value, Math.max(sized.get(s.st_value) ?? 0, s.st_size));
      // Names are for reports only: the first few symbols at an address are enough, and looking
      // at no more than that keeps thousands of aliases cheap.
      const looked = namesLooked.get(s.st_value) ?? 0;
      if (looked < 8) {
        namesLooked.set(s.st_value, looked + 1);
        const l = names.get(s.st_value) ?? [];
        if (s.name && !l.includes(s.name)) l.push(s.name);
        names.set(s.st_value, l);
      }
    }
  }
  return { starts: [...startSet].sort((a, b) => a - b), sized, names };
}

/** Refuses when any instruction of `d` did not decode (`where`: the section, for the reason). */
function refuseUndecodable(d: DecodedRange, where: string): void {
  for (let k = 0; k < d.count; k++) {
    if (d.code[k] === CODE_INVALID) throw new ElfRefusal(`bytes in ${where} that do not decode as instructions`, d.ip[k]);
  }
}

/** Index of the atom holding `addr` (atoms sorted by start, the first at or below `addr`). */
function atomAt(atoms: Atom[], addr: number): number {
  let lo = 0;
  let hi = atoms.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (atoms[mid].start <= addr) lo = mid; else hi = mid - 1;
  }
  return lo;
}

/**
 * Joins of atom ranges, recorded as a difference array and applied in one sweep at the end, so
 * that many long-range references cost O(n), not O(n * range), on hostile input.
 */
class Joins {
  readonly diff: Int32Array;
  readonly reasons = new Map<string, number>();
  constructor(atoms: number) {
    this.diff = new Int32Array(atoms + 1);
  }

  join(a: number, b: number, why: string): void {
    const lo = Math.min(a, b);
    const hi = Math.max(a, b);
    if (lo === hi) return;
    this.diff[lo]++;
    this.diff[hi]--;
    this.reasons.set(why, (this.reasons.get(why) ?? 0) + 1);
  }

  /** joinNext[i]: atom i and atom i+1 end up in one unit. */
  joinNext(): Uint8Array {
    const next = new Uint8Array(this.diff.length - 1);
    for (let i = 0, open = 0; i < next.length; i++) {
      open += this.diff[i];
      next[i] = open > 0 ? 1 : 0;
    }
    return next;
  }
}

/**
 * Where each atom's code ends: at its symbol's end when the bytes after it are provably padding.
 * Joins an atom to the next when its symbol runs over it, or when its code can fall through.
 */
function joinBySizeAndFallThrough(img: Image, d: DecodedRange, atoms: Atom[], sized: Map<number, number>, joins: Joins): void {
  for (let i = 0; i < atoms.length; i++) {
    const a = atoms[i];
    const size = sized.get(a.start);
    let sizedEnd = false;
    if (size !== undefined) {
      const symEnd = a.start + size;
      if (symEnd > a.end) {
        joins.join(i, atomAt(atoms, Math.min(symEnd - 1, img.textEnd - 1)), 'symbol extends over the next symbol');
      } else {
        // Trailing bytes after the symbol's end must be padding instructions starting at symEnd.
        let k = a.first;
        while (k < a.last && d.ip[k] < symEnd) k++;
        // An instruction must end at symEnd: when none starts at or after it, the last one must end
        // there (it may run across it, and cutting there would split it).
        let pad = k === a.last ? symEnd === a.end : d.ip[k] === symEnd;
        for (let j = k; pad && j < a.last; j++) if (!(d.flags[j] & F_PADDING)) pad = false;
        if (pad) { a.coreEnd = symEnd; sizedEnd = true; }
      }
    }
    if (!sizedEnd) {
      // No size to trust: if the last real instruction can fall through, keep the next atom after it.
      let k = a.last - 1;
      while (k >= a.first && (d.flags[k] & F_PADDING)) k--;
      if (k >= a.first && !(d.flags[k] & F_TERMINATOR) && i + 1 < atoms.length) joins.join(i, i + 1, 'code falls through into the next symbol');
    }
  }
}

/**
 * Matches the relocations of .text with the decoded PC-relative operands. Joins atoms that an
 * unrelocated operand ties together, refuses what cannot be re-applied, and returns the
 * relocated RIP-relative `lea`s outside .text as [target, atom] (jump-table bases).
 */
function matchTextRelocs(img: Image, d: DecodedRange, atoms: Atom[], joins: Joins): [number, number][] {
  // Relocations of .text in offset order, walked in step with the operands (which come in address
  // order): no per-byte index of .text is needed. `matched` records which ones sit on an operand.
  const tr = img.codeRelocs.get(img.text.index) ?? NO_RELOCS;
  const relOrder = new Int32Array(tr.count);
  let relSorted = true;
  for (let q = 0; q < tr.count; q++) {
    relOrder[q] = q;
    if (q > 0 && tr.r_offset[q - 1] > tr.r_offset[q]) relSorted = false;
  }
  if (!relSorted) relOrder.sort((x, y) => tr.r_offset[x] - tr.r_offset[y] || x - y);
  const matched = new Uint8Array(tr.count);
  let ro = 0;
  const leaAtoms: [number, number][] = [];
  // Only the instructions with a PC-relative field are visited (d.refs), in address order; `i` is
  // the atom that holds instruction k.
  for (let r = 0, i = 0; r < d.refs.length; r++) {
    const k = d.refs[r];
    while (k >= atoms[i].last) i++;
    const field = d.ip[k] + d.fieldOff[r];
    const t = d.target[r];
    while (ro < relOrder.length && tr.r_offset[relOrder[ro]] < field) ro++;
    // Several relocations at one offset: all sit on the operand, the last one in the table applies.
    let rel = -1;
    for (let q = ro; q < relOrder.length && tr.r_offset[relOrder[q]] === field; q++) {
      rel = relOrder[q];
      matched[rel] = 1;
    }
    const relocated = rel >= 0;
    if (relocated && !PC_RELATIVE_CODE_RELOCS.has(tr.r_type[rel])) throw new ElfRefusal(`unsupported relocation type ${relocTypeName(tr.r_type[rel])} on a code operand`, field);
    if (relocated && d.fieldSize[r] !== 4) throw new ElfRefusal('relocation on a short PC-relative field', field);
    if (inText(img, t)) {
      if (!relocated) {
        const j = atomAt(atoms, t);
        if (j !== i) joins.join(i, j, 'unrelocated reference between symbols');
      }
    } else if (!relocated) {
      throw new ElfRefusal(`unrelocated PC-relative reference from .text to 0x${t.toString(16)} outside .text`, d.ip[k]);
    } else if (d.refKind[r] !== REF_BRANCH && d.code[k] === Code.Lea_r64_m) {
      leaAtoms.push([t, i]);
    }
  }
  // Every relocation in .text must sit on an operand we decoded, or need nothing when code moves.
  for (let q = 0; q < tr.count; q++) {
    if (matched[q] === 1 || POSITION_FREE_CODE_RELOCS.has(tr.r_type[q])) continue;
    throw new ElfRefusal(`${relocTypeName(tr.r_type[q])} relocation does not match a PC-relative operand (unresolvable reference)`, tr.r_offset[q]);
  }
  return leaAtoms;
}

/** FDEs that cover several atoms keep them together. */
function joinByFdes(img: Image, atoms: Atom[], joins: Joins): void {
  for (let k = 0; k < img.fdes.count; k++) {
    const pcBegin = img.fdes.pcBegin[k];
    if (!inText(img, pcBegin)) continue;
    const last = pcBegin + Math.max(img.fdes.pcRange[k], 1) - 1;
    if (last >= img.textEnd) throw new ElfRefusal('FDE range runs past the end of .text', pcBegin);
    const i = atomAt(atoms, pcBegin);
    const j = atomAt(atoms, last);
    if (i !== j) joins.join(i, j, 'one FDE covers several symbols');
  }
}

/** Other executable sections stay in place; their references into .text must be relocated. */
function otherExecReferences(img: Image): { refs: CodeRef[]; decoded: DecodedRange[] } {
  const refs: CodeRef[] = [];
  const decoded: DecodedRange[] = [];
  for (const s of img.otherExec) {
    const d = decodeRange(sectionData(img.elf, s), s.sh_addr);
    // Checked here, not left to the verifier: an input whose other code does not decode is refused
    // with this reason whatever the seed.
    refuseUndecodable(d, s.name);
    decoded.push(d);
    const rel = fieldSet(img.codeRelocs.get(s.index) ?? NO_RELOCS);
    for (let r = 0; r < d.refs.length; r++) {
      const k = d.refs[r];
      if (!inText(img, d.target[r])) continue;
      const field = d.ip[k] + d.fieldOff[r];
      const type = rel.get(field);
      if (type === undefined || d.fieldSize[r] !== 4) throw new ElfRefusal(`unrelocated reference from ${s.name} into .text`, d.ip[k]);
      if (!PC_RELATIVE_CODE_RELOCS.has(type)) throw new ElfRefusal(`unsupported relocation type ${relocTypeName(type)} on a code operand`, field);
      refs.push({ ip: d.ip[k], len: d.len[k], fieldOff: d.fieldOff[r], target: d.target[r] });
    }
  }
  return { refs, decoded };
}

/** Units from runs of joined atoms, and the unit of each atom. */
function buildUnits(img: Image, d: DecodedRange, atoms: Atom[], joinNext: Uint8Array): { units: Unit[]; atomUnit: Int32Array; alignment: Alignments } {
  const groups: Atom[][] = [];
  const atomUnit = new Int32Array(atoms.length);
  for (let i = 0; i < atoms.length;) {
    let j = i;
    while (j < atoms.length - 1 && joinNext[j]) j++;
    for (let k = i; k <= j; k++) atomUnit[k] = groups.length;
    groups.push(atoms.slice(i, j + 1));
    i = j + 1;
  }
  const extents = groups.map((g) => ({ start: g[0].start, coreEnd: g[g.length - 1].coreEnd }));
  const alignment = unitAlignments(img, d, extents, (a) => atoms[atomAt(atoms, a)].start === a);
  const units = groups.map((group, index): Unit => {
    const { start, coreEnd } = extents[index];
    let coreLast = group[group.length - 1].last;
    while (coreLast > group[0].first && d.ip[coreLast - 1] >= coreEnd) coreLast--;
    return {
      index, start, end: group[group.length - 1].end, coreEnd, first: group[0].first, coreLast,
      align: alignment.align[index], atoms: group, names: group.flatMap((a) => a.names),
    };
  });
  return { units, atomUnit, alignment };
}

/**
 * The phases above, each its own function: V8 optimizes a loop by compiling the function around
 * it, so one function per loop is compiled once and small, where one large function was compiled
 * again for each loop that came to run without type feedback (a fresh process's first runs).
 */
export function findUnits(img: Image): UnitPlan {
  const { starts, sized, names } = atomStarts(img);
  const { code: d, pieceFirst } = decodePieces(sectionData(img.elf, img.text), img.textStart, starts);
  const atoms: Atom[] = starts.map((start, i) => {
    const end = i + 1 < starts.length ? starts[i + 1] : img.textEnd;
    return { start, end, coreEnd: end, first: pieceFirst[i], last: pieceFirst[i + 1], names: names.get(start) ?? [] };
  });
  refuseUndecodable(d, '.text');
  const joins = new Joins(atoms.length);
  joinBySizeAndFallThrough(img, d, atoms, sized, joins);
  const leaAtoms = matchTextRelocs(img, d, atoms, joins);
  joinByFdes(img, atoms, joins);
  const other = otherExecReferences(img);
  const { units, atomUnit, alignment } = buildUnits(img, d, atoms, joins.joinNext());
  const leaBases = new Map<number, Set<number>>();
  for (const [t, i] of leaAtoms) {
    const set = leaBases.get(t) ?? new Set<number>();
    set.add(atomUnit[i]);
    leaBases.set(t, set);
  }
  return {
    code: d, units, starts: Float64Array.from(units.map((u) => u.start)), joined: { atoms: atoms.length - units.length, reasons: joins.reasons },
    leaBases, otherExecRefs: other.refs, otherExecDecoded: other.decoded, alignment: { common: alignment.common, dataKept: alignment.dataKept },
  };
}
