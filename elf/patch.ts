/**
 * Phases 4–6: move code, patch references, rebuild metadata.
 *
 * Works on a copy of the input bytes of the same size (no section or segment moves): the units
 * are copied to their new places inside .text, then every reference into moved code is
 * re-applied — PC-relative operands in code, jump tables and other PC-relative words in data,
 * dynamic relocations (RELATIVE / IRELATIVE addends and the link-time words they cover),
 * .dynsym/.symtab values, DT_INIT/DT_FINI, FDE pc_begin and the sorted .eh_frame_hdr table.
 * Static relocations are the evidence that a field is a reference; a code address in data that
 * no relocation explains is a refusal.
 */
import { ElfRefusal } from './errors';
import { pcBeginField, pcBeginFileOffset } from './ehframe';
import { Image, inText, relocSymbol, relocTarget } from './image';
import { inCore, Layout, mapAddress } from './layout';
import { vaddrToOffset } from './reader';
import {
  DT_FINI, DT_INIT, relocTypeName, R_X86_64_64, R_X86_64_IRELATIVE, R_X86_64_PC32, R_X86_64_PLT32,
  R_X86_64_RELATIVE, R_X86_64_RELATIVE64, SHF_ALLOC, SHF_EXECINSTR, STT_SECTION,
} from './types';
import { unitIndexAt } from './units';

/** int3: a stray jump into the gaps between moved functions traps instead of sliding into code. */
const FILL_BYTE = 0xcc;

export interface PatchStats {
  codeRefs: number;
  jumpTableEntries: number;
  dataPcRel: number;
  dynRelocs: number;
  symbols: number;
  fdes: number;
}

function fileOff(img: Image, addr: number, len: number): number {
  const o = vaddrToOffset(img.elf, addr, len);
  if (o === undefined) throw new ElfRefusal('address is not backed by file contents', addr);
  return o;
}

function writeI32(out: DataView, off: number, v: number, where: number): void {
  if (v < -0x80000000 || v > 0x7fffffff) throw new ElfRefusal('PC-relative value out of 32-bit range after moving code', where);
  out.setInt32(off, v, true);
}

/** A code target must be inside the copied bytes of some unit; anything else is not a function. */
function mapCodeTarget(layout: Layout, t: number, where: number): number {
  if (!inCore(layout, t)) throw new ElfRefusal(`reference into padding or past the end of a function (target 0x${t.toString(16)})`, where);
  return mapAddress(layout, t);
}

export function moveCodeAndPatch(img: Image, layout: Layout, out: Uint8Array): PatchStats {
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  const stats: PatchStats = { codeRefs: 0, jumpTableEntries: 0, dataPcRel: 0, dynRelocs: 0, symbols: 0, fdes: 0 };
  // One function per pass (a fresh process's JIT compiles each loop's function on its own).
  moveUnits(img, layout, out);
  patchCodeRefs(img, layout, view, stats);
  // References from code that stays (.init, .plt ...) into .text.
  for (const r of layout.plan.otherExecRefs) {
    writeI32(view, fileOff(img, r.ip + r.fieldOff, 4), mapCodeTarget(layout, r.target, r.ip) - (r.ip + r.len), r.ip);
    stats.codeRefs++;
  }
  patchDataRelocs(img, layout, view, stats);
  patchDynamic(img, layout, view, stats);
  patchSymbols(img, layout, view, stats);
  patchEhFrame(img, layout, view, stats);
  return stats;
}

/** Copies each unit's code to its new place; the rest of .text becomes int3. */
function moveUnits(img: Image, layout: Layout, out: Uint8Array): void {
  const src = img.elf.bytes;
  const textOff = img.text.sh_offset;
  out.fill(FILL_BYTE, textOff, textOff + img.text.sh_size);
  for (const u of layout.plan.units) {
    const from = textOff + (u.start - img.textStart);
    out.set(src.subarray(from, from + (u.coreEnd - u.start)), textOff + (layout.newStart[u.index] - img.textStart));
  }
}

/** PC-relative operands in moved code that reach outside their own unit. */
function patchCodeRefs(img: Image, layout: Layout, view: DataView, stats: PatchStats): void {
  const textOff = img.text.sh_offset;
  const plan = layout.plan;
  // Units are in address order, and so are the instructions with a PC-relative field (d.refs).
  const d = plan.code;
  let r = 0;
  for (const u of plan.units) {
    const delta = layout.newStart[u.index] - u.start;
    while (r < d.refs.length && d.refs[r] < u.first) r++;
    for (; r < d.refs.length && d.refs[r] < u.coreLast; r++) {
      const k = d.refs[r];
      const t = d.target[r];
      const sameUnit = t >= u.start && t < u.end;
      if (sameUnit) continue; // moves with the instruction
      const newT = inText(img, t) ? mapCodeTarget(layout, t, d.ip[k]) : t;
      const newEnd = d.ip[k] + delta + d.len[k];
      writeI32(view, textOff + (d.ip[k] + delta + d.fieldOff[r] - img.textStart), newT - newEnd, d.ip[k]);
      stats.codeRefs++;
    }
  }
}

/** Static relocations in allocated data: each one whose value depends on a code address. */
function patchDataRelocs(img: Image, layout: Layout, view: DataView, stats: PatchStats): void {
  const dynAt = new Map<number, number>();
  img.dynRelocs.forEach((r, i) => dynAt.set(r.r_offset, i));
  const jt = jumpTableIndex(img, layout);
  const fdeFields = new Set<number>();
  for (let k = 0; k < img.fdes.count; k++) fdeFields.add(pcBeginField(img.fdes, k));
  for (const [secIndex, relocs] of img.staticRelocs) {
    const sec = img.elf.sections[secIndex];
    if (!(sec.sh_flags & SHF_ALLOC) || (sec.sh_flags & SHF_EXECINSTR)) continue;
    const isEhFrame = img.ehFrame !== undefined && sec.index === img.ehFrame.index;
    for (let q = 0; q < relocs.count; q++) {
      const f = relocs.r_offset[q];
      const type = relocs.r_type[q];
      const sym = relocSymbol(img, relocs, q);
      const target = relocTarget(img, relocs, q);
      const symInText = sym !== undefined && sym.st_shndx === img.text.index;
      const targetInText = target !== undefined && inText(img, target);
      if (!symInText && !targetInText) continue; // value does not depend on where code is
      // Reaching code by address through a symbol of another section (or none) is a contradiction
      // the verifier, which goes by the symbol, would read differently: refuse it here.
      if (!symInText) throw new ElfRefusal(`relocation in ${sec.name} reaches .text through a symbol of another section`, f);
      if (isEhFrame) {
        // FDE pc_begin fields are re-applied from the parsed FDEs; any other code reference is unknown.
        if (!fdeFields.has(f)) throw new ElfRefusal('.eh_frame reference to code that is not an FDE pc_begin', f);
        continue;
      }
      if (type === R_X86_64_64) {
        const t = target!;
        const i = dynAt.get(f);
        const dr = i === undefined ? undefined : img.dynRelocs[i];
        const byAddend = dr !== undefined && (dr.r_type === R_X86_64_RELATIVE || dr.r_type === R_X86_64_IRELATIVE) && dr.r_addend === t;
        const bySymbol = dr !== undefined && dr.r_type !== R_X86_64_RELATIVE && dr.r_type !== R_X86_64_IRELATIVE && dr.r_sym !== 0;
        const ok = byAddend || bySymbol;
        if (!ok) throw new ElfRefusal(`code address in ${sec.name} without a matching dynamic relocation`, f);
        continue; // re-applied through the dynamic relocation (and its symbol)
      }
      if (type === R_X86_64_PC32 || type === R_X86_64_PLT32) {
        const off = fileOff(img, f, 4);
        const v = view.getInt32(off, true);
        const base = jumpTableBase(img, jt, f, v);
        if (base !== undefined) {
          if (target !== undefined && target - f !== v) throw new ElfRefusal('jump-table entry does not match its relocation', f);
          writeI32(view, off, mapCodeTarget(layout, base + v, f) - base, f);
          stats.jumpTableEntries++;
          continue;
        }
        // `.long func - .`: only when the relocation names the function itself, not a section.
        if (sym?.type === STT_SECTION || target === undefined || target !== f + v || !inText(img, target)) {
          throw new ElfRefusal(`PC-relative reference to code in ${sec.name} with no known base`, f);
        }
        writeI32(view, off, mapCodeTarget(layout, target, f) - f, f);
        stats.dataPcRel++;
        continue;
      }
      throw new ElfRefusal(`unsupported relocation type ${relocTypeName(type)} to code in ${sec.name}`, f);
    }
  }
}

/** What proves a jump table: lea-loaded bases, and runs of consecutive PC32 words in data. */
export interface JumpTableIndex {
  readonly bases: number[];
  /** Offsets of the PC32/PLT32 data relocations, ascending (duplicates kept). */
  readonly offsets: Float64Array;
  /** For each of them, the first offset of the run of 4-byte-apart relocations it belongs to. */
  readonly runStart: Float64Array;
}

/** Start of the run holding a relocation at offset `f`, or undefined when none is there. */
function runStartOf(jt: JumpTableIndex, f: number): number | undefined {
  const o = jt.offsets;
  let lo = 0;
  let hi = o.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (o[mid] < f) lo = mid + 1;
    else if (o[mid] > f) hi = mid - 1;
    else return jt.runStart[mid];
  }
  return undefined;
}

export function jumpTableIndex(img: Image, layout: Layout): JumpTableIndex {
  const offs: number[] = [];
  for (const [secIndex, relocs] of img.staticRelocs) {
    const sec = img.elf.sections[secIndex];
    if (!(sec.sh_flags & SHF_ALLOC) || (sec.sh_flags & SHF_EXECINSTR)) continue;
    for (let q = 0; q < relocs.count; q++) if (relocs.r_type[q] === R_X86_64_PC32 || relocs.r_type[q] === R_X86_64_PLT32) offs.push(relocs.r_offset[q]);
  }
  const offsets = Float64Array.from(offs).sort();
  // In ascending order, a relocation 4 bytes below (already done) continues its run.
  const runStart = new Float64Array(offsets.length);
  const jt = { bases: [...layout.plan.leaBases.keys()].sort((a, b) => a - b), offsets, runStart };
  for (let i = 0; i < offsets.length; i++) {
    const o = offsets[i];
    runStart[i] = (o - 4 >= offsets[0] ? runStartOf(jt, o - 4) : undefined) ?? o;
  }
  return jt;
}

/**
 * The base of the jump table holding the entry at `f`, if the code and the relocations prove it:
 * the nearest `lea base(%rip)` target at or below the entry, with an unbroken run of PC-relative
 * relocations from the base to the entry (GCC's `.long .Lcase - .Ltable` array), and
 * base + entry landing on code. The case may be in another unit (a `.cold` part).
 */
export function jumpTableBase(img: Image, jt: JumpTableIndex, f: number, v: number): number | undefined {
  const bases = jt.bases;
  let lo = 0;
  let hi = bases.length - 1;
  let best = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (bases[mid] <= f) { best = mid; lo = mid + 1; } else hi = mid - 1;
  }
  if (best < 0) return undefined;
  const b = bases[best];
  const run = runStartOf(jt, f);
  if (run === undefined || (f - b) % 4 !== 0) return undefined;
  if (run > b ? !onlyZeroWords(img, b, run) : runStartOf(jt, b) === undefined) return undefined;
  if (!inText(img, b + v)) return undefined;
  return b;
}

/** R_X86_64_PC32, GOTPCREL, 32, 32S, PLT32, GOTPCRELX, REX_GOTPCRELX: relocations of 4 bytes. */
const FOUR_BYTE_RELOCS = new Set([2, 9, 10, 11, 4, 41, 42]);

/** Most unrelocated zero words accepted between a table's base and its first relocated entry. */
const MAX_LEADING_ZERO_WORDS = 4;

/**
 * Whether [from, to) holds only a few 4-byte zero words with no static relocation: the leading
 * entries of a table that the code never jumps through (gmp's mpn_mullo_basecase has a 0 first
 * entry, so its run of relocations starts one word after the base the lea loads).
 */
function onlyZeroWords(img: Image, from: number, to: number): boolean {
  if ((to - from) % 4 !== 0 || to - from > 4 * MAX_LEADING_ZERO_WORDS) return false;
  for (let w = from; w < to; w += 4) {
    const o = vaddrToOffset(img.elf, w, 4);
    if (o === undefined || img.elf.view.getInt32(o, true) !== 0) return false;
  }
  for (const relocs of img.staticRelocs.values()) {
    for (let q = 0; q < relocs.count; q++) {
      // Any relocation reaching into the words refuses; one not known to be 4 bytes counts as 8.
      const size = FOUR_BYTE_RELOCS.has(relocs.r_type[q]) ? 4 : 8;
      if (relocs.r_offset[q] + size > from && relocs.r_offset[q] < to) return false;
    }
  }
  return true;
}

function patchDynamic(img: Image, layout: Layout, view: DataView, stats: PatchStats): void {
  for (const r of img.dynRelocs) {
    if (r.r_type === R_X86_64_RELATIVE64) throw new ElfRefusal('R_X86_64_RELATIVE64 is not supported', r.r_offset);
    if (r.r_type !== R_X86_64_RELATIVE && r.r_type !== R_X86_64_IRELATIVE) continue;
    if (!inText(img, r.r_addend)) continue;
    const n = mapCodeTarget(layout, r.r_addend, r.r_offset);
    view.setBigInt64(r.fileOffset + 16, BigInt(n), true);
    // GNU ld also stores the link-time value in the word itself; keep it consistent.
    const w = vaddrToOffset(img.elf, r.r_offset, 8);
    if (w !== undefined && Number(view.getBigUint64(w, true)) === r.r_addend) view.setBigUint64(w, BigInt(n), true);
    stats.dynRelocs++;
  }
  for (const d of img.dynamic) {
    if ((d.d_tag === DT_INIT || d.d_tag === DT_FINI) && inText(img, d.d_val)) {
      view.setBigUint64(d.fileOffset + 8, BigInt(mapCodeTarget(layout, d.d_val, d.d_val)), true);
    }
  }
}

function patchSymbols(img: Image, layout: Layout, view: DataView, stats: PatchStats): void {
  for (const table of [img.symtab, img.dynsym]) {
    if (!table) continue;
    for (const s of table.symbols) {
      if (s.st_shndx !== img.text.index || s.type === STT_SECTION || !inText(img, s.st_value)) continue;
      view.setBigUint64(s.fileOffset + 8, BigInt(mapAddress(layout, s.st_value)), true);
      stats.symbols++;
    }
  }
}

function patchEhFrame(img: Image, layout: Layout, view: DataView, stats: PatchStats): void {
  const newBegin = new Map<number, number>(); // FDE address -> new pc_begin
  const fdes = img.fdes;
  for (let k = 0; k < fdes.count; k++) {
    const pcBegin = fdes.pcBegin[k];
    const address = fdes.address[k];
    let nb = pcBegin;
    if (inText(img, pcBegin)) {
      const field = pcBeginField(fdes, k);
      nb = mapCodeTarget(layout, pcBegin, field);
      const u = layout.plan.units[unitIndexAt(layout.plan, pcBegin)];
      if (pcBegin + fdes.pcRange[k] > u.coreEnd) throw new ElfRefusal('FDE range runs past its function', address);
      writeI32(view, pcBeginFileOffset(fdes, k), nb - field, address);
      stats.fdes++;
    }
    newBegin.set(address, nb);
  }
  const hdr = img.ehFrameHdrTable;
  if (!hdr || !img.ehFrameHdr) return;
  const base = img.ehFrameHdr.sh_addr;
  const entries = Array.from(hdr.fdeAddress, (fde) => ({ loc: newBegin.get(fde)!, fde }));
  entries.sort((a, b) => a.loc - b.loc || a.fde - b.fde);
  entries.forEach((e, i) => {
    writeI32(view, hdr.tableFileOffset + i * 8, e.loc - base, base);
    writeI32(view, hdr.tableFileOffset + i * 8 + 4, e.fde - base, base);
  });
}

