/**
 * Phase 8: verify the output image against the input before anything is written.
 *
 * The verifier re-reads the output bytes with the reader and decodes the output code with
 * iced-x86 itself. From the rewriter it takes the unit layout (where each input unit went), the
 * input's decoding (disasm.ts, shared with the unit finder) and one reading of the input: which
 * lea proves a jump table's base (patch.ts jumpTableIndex/jumpTableBase), so that a data word is
 * checked against the same base the rewriter used: a mistake in that reading would be shared, not
 * caught here (the code checks below do not depend on it). It checks:
 *  - units are placed without overlap, aligned, inside .text; the rest of .text is int3;
 *  - every address in .text that a RIP-relative memory operand reads keeps its alignment (up to
 *    .text's), recomputed here from the instructions, not taken from the plan (aligned SIMD loads
 *    of constants kept in code fault, or read other bytes, when it does not);
 *  - every instruction of every unit decodes to the same instruction, byte-identical except for
 *    PC-relative fields, and every branch, call and RIP-relative operand reaches the moved
 *    counterpart of what it reached in the input (code outside .text likewise);
 *  - .dynsym/.symtab values, dynamic relocations (and the words they cover), DT_INIT/DT_FINI,
 *    FDE pc_begin, the .eh_frame_hdr table (sorted, one entry per FDE) follow the move;
 *  - in the loadable non-code part, no byte changed except the fields above, PC-relative words
 *    named by static relocations, symbol section indexes and the build-id.
 * Any failure throws VerifyError with the address; the image is then never written.
 */
import { Code } from 'iced-x86';
import { CODE_INVALID, decodeRange, DecodedRange, lowerBound, REF_RIPREL, SpanDecoder } from './disasm';
import { parseEhFrame, parseEhFrameHdr, pcBeginFileOffset } from './ehframe';
import { VerifyError } from './errors';
import { Image, inText, relocSymbol } from './image';
import { Layout, mapAddress } from './layout';
import { jumpTableBase, jumpTableIndex } from './patch';
import { readDynamic, readElf, readRelaRange, readSymbolFields, readSymbols, sectionByName, vaddrToOffset, ElfFile, gnuBuildIds } from './reader';
import {
  DT_FINI, DT_INIT, SectionHeader, DT_JMPREL, DT_PLTRELSZ, DT_RELA, DT_RELASZ, ELF64_RELA_SIZE,
  R_X86_64_IRELATIVE, R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_RELATIVE, SHF_ALLOC, SHF_EXECINSTR,
  SHT_DYNSYM, SHT_NOBITS, SHT_SYMTAB, STT_SECTION, SHN_ABS, isSpecialSectionIndex,
} from './types';

export interface VerifyReport {
  instructions: number;
  pcRelOperands: number;
  symbols: number;
  dynRelocs: number;
  fdes: number;
  dataWords: number;
}

function fail(msg: string, where?: number): never {
  throw new VerifyError(msg, where);
}

/**
 * How the output code is checked:
 *  - 'decode' (default): iced-x86 decodes the output .text itself, and every instruction is
 *    compared with its input counterpart (same form, same bytes outside PC-relative fields,
 *    operands reaching the moved targets).
 *  - 'fields': the output is read at the instruction boundaries of the input decoding. Sound
 *    because every byte outside the PC-relative fields is checked equal to the input, and the
 *    value of a displacement or branch offset never changes how x86 decodes an instruction; the
 *    operands are then recomputed from the output bytes. About half the cost.
 */
export type VerifyMode = 'decode' | 'fields';

export function verifyImage(img: Image, layout: Layout, output: Uint8Array, mode: VerifyMode = 'decode'): VerifyReport {
  const out = readElf(output);
  const rep: VerifyReport = { instructions: 0, pcRelOperands: 0, symbols: 0, dynRelocs: 0, fdes: 0, dataWords: 0 };
  // One function per check (each with its own loop): V8 optimizes a loop by compiling the function
  // around it, and one large function was compiled again for each loop a fresh process reached.
  const allocIn = verifyHeaders(img.elf, out);
  verifyText(img, layout, out, rep, mode);
  verifyDataAlignment(img, layout);
  verifyOtherCode(img, layout, out, rep, mode);
  // Fields allowed to differ in the loadable non-code part: file offsets and lengths.
  const allowed = new Allowed();
  verifySymbols(img, layout, out, rep, allowed);
  verifyDynamic(img, layout, out, rep, allowed);
  verifyEhFrame(img, layout, out, rep, allowed);
  verifyDataWords(img, layout, out, rep, allowed);
  // Build-id must differ from the input's.
  for (const n of gnuBuildIds(out)) {
    const orig = img.elf.bytes.subarray(n.descOffset, n.descOffset + n.desc.length);
    if (Buffer.compare(Buffer.from(orig), Buffer.from(n.desc)) === 0) fail('build-id unchanged');
    allowed.add(n.descOffset, n.desc.length);
  }
  verifyNothingElseChanged(img.elf, output, allocIn, allowed.merged());
  return rep;
}

/** RIP-relative memory operands (not `lea`, not branches) into .text reach an address as aligned as before. */
function verifyDataAlignment(img: Image, layout: Layout): void {
  const d = layout.plan.code;
  const cap = Math.max(1, Math.min(img.text.sh_addralign || 1, 4096));
  for (let r = 0; r < d.refs.length; r++) {
    const k = d.refs[r];
    const t = d.target[r];
    if (d.refKind[r] !== REF_RIPREL || d.code[k] === Code.Lea_r64_m || d.code[k] === Code.Lea_r32_m || !inText(img, t)) continue;
    let a = 1;
    while (a < cap && t % (a * 2) === 0) a *= 2;
    if ((mapAddress(layout, t) - t) % a !== 0) fail(`data read from .text at 0x${t.toString(16)} loses its ${a}-byte alignment`, d.ip[k]);
  }
}

/** Headers of the loadable part are unchanged. Returns the input's allocated sections. */
function verifyHeaders(inp: ElfFile, out: ElfFile): SectionHeader[] {
  if (out.segments.length !== inp.segments.length) fail('program header count changed');
  for (let i = 0; i < inp.segments.length; i++) {
    const a = inp.segments[i];
    const b = out.segments[i];
    if (a.p_type !== b.p_type || a.p_offset !== b.p_offset || a.p_vaddr !== b.p_vaddr || a.p_filesz !== b.p_filesz || a.p_memsz !== b.p_memsz || a.p_flags !== b.p_flags) {
      fail(`program header ${i} changed`);
    }
  }
  const allocIn = inp.sections.filter((s) => s.sh_flags & SHF_ALLOC);
  const allocOut = out.sections.filter((s) => s.sh_flags & SHF_ALLOC);
  if (allocIn.length !== allocOut.length) fail('allocated sections changed');
  allocIn.forEach((s, i) => {
    const o = allocOut[i];
    if (o.name !== s.name || o.sh_addr !== s.sh_addr || o.sh_size !== s.sh_size || o.sh_offset !== s.sh_offset || o.sh_type !== s.sh_type) fail(`section ${s.name} moved or resized`);
  });
  return allocIn;
}

/** Every symbol keeps its name, size, type and section, and points to its moved body. */
function verifySymbols(img: Image, layout: Layout, out: ElfFile, rep: VerifyReport, allowed: Allowed): void {
  const inp = img.elf;
  for (const type of [SHT_SYMTAB, SHT_DYNSYM]) {
    const si = inp.sections.find((s) => s.sh_type === type);
    const so = out.sections.find((s) => s.sh_type === type);
    if (!si) continue;
    if (!so) fail(`symbol table ${si.name} missing from output`);
    const a = si === img.symtab.section ? img.symtab.symbols : si === img.dynsym?.section ? img.dynsym.symbols : readSymbols(inp, si);
    // The output's table as flat fields (read on every randomization: no object per symbol).
    const b = readSymbolFields(out, so);
    if (a.length !== b.count) fail(`${si.name} symbol count changed`);
    for (let i = 0; i < a.length; i++) {
      const x = a[i];
      const yShndx = b.st_shndx[i];
      const yValue = b.st_value[i];
      // The string tables are copied unchanged, so the name index identifies the name.
      if (x.st_name !== b.st_name[i] || x.st_info !== b.st_info[i] || x.st_size !== b.st_size[i]) fail(`${si.name} symbol ${x.name} changed`, x.st_value);
      const moved = x.st_shndx === img.text.index && x.type !== STT_SECTION && inText(img, x.st_value);
      // Section indexes are renumbered by the writer: the symbol must still name the same section
      // (or be absolute when its section was stripped).
      const sameSection = isSpecialSectionIndex(x.st_shndx)
        ? yShndx === x.st_shndx
        : (out.sections[yShndx]?.name === inp.sections[x.st_shndx]?.name && !isSpecialSectionIndex(yShndx)) ||
          (yShndx === SHN_ABS && !out.sections.some((o) => o.name === inp.sections[x.st_shndx]?.name));
      if (!sameSection) fail(`symbol ${x.name} changed section`, x.st_value);
      const want = moved ? mapAddress(layout, x.st_value) : x.st_value;
      if (yValue !== want) fail(`symbol ${x.name} does not point to its moved body (0x${yValue.toString(16)}, want 0x${want.toString(16)})`, x.st_value);
      if (si.sh_flags & SHF_ALLOC) { allowed.add(x.fileOffset + 8, 8); allowed.add(x.fileOffset + 6, 2); }
      rep.symbols++;
    }
  }
}

/** Dynamic relocations (and the words they cover) and DT_INIT/DT_FINI follow the moved code. */
function verifyDynamic(img: Image, layout: Layout, out: ElfFile, rep: VerifyReport, allowed: Allowed): void {
  const inp = img.elf;
  const dynOut = readDynamic(out);
  const dynIn = img.dynamic;
  if (dynOut.length !== dynIn.length) fail('dynamic section changed');
  const outRelocs = readDynRelocs(out, dynOut);
  if (outRelocs.length !== img.dynRelocs.length) fail('dynamic relocation count changed');
  for (let i = 0; i < img.dynRelocs.length; i++) {
    const r = img.dynRelocs[i];
    const o = outRelocs[i];
    if (o.r_offset !== r.r_offset || o.r_type !== r.r_type || o.r_sym !== r.r_sym) fail('dynamic relocation changed', r.r_offset);
    const isAddr = r.r_type === R_X86_64_RELATIVE || r.r_type === R_X86_64_IRELATIVE;
    const want = isAddr && inText(img, r.r_addend) ? mapAddress(layout, r.r_addend) : r.r_addend;
    if (o.r_addend !== want) fail('dynamic relocation addend does not follow the moved code', r.r_offset);
    if (want === r.r_addend) continue;
    allowed.add(r.fileOffset + 16, 8);
    const w = vaddrToOffset(inp, r.r_offset, 8);
    if (w !== undefined) {
      const before = Number(inp.view.getBigUint64(w, true));
      const after = Number(out.view.getBigUint64(w, true));
      if (before === r.r_addend ? after !== want : after !== before) fail('word under a RELATIVE relocation not updated consistently', r.r_offset);
      allowed.add(w, 8);
    }
    rep.dynRelocs++;
  }
  for (let i = 0; i < dynIn.length; i++) {
    const d = dynIn[i];
    const o = dynOut[i];
    const want = (d.d_tag === DT_INIT || d.d_tag === DT_FINI) && inText(img, d.d_val) ? mapAddress(layout, d.d_val) : d.d_val;
    if (o.d_tag !== d.d_tag || o.d_val !== want) fail(`dynamic entry ${d.d_tag} wrong`, d.fileOffset);
    allowed.add(d.fileOffset + 8, 8);
  }
}

/** FDE pc_begin follows its function; .eh_frame_hdr's table is sorted with one entry per FDE. */
function verifyEhFrame(img: Image, layout: Layout, out: ElfFile, rep: VerifyReport, allowed: Allowed): void {
  if (!img.ehFrame) return;
  const fo = parseEhFrame(out.view, img.ehFrame.sh_offset, img.ehFrame.sh_size, img.ehFrame.sh_addr);
  const fi = img.fdes;
  if (fo.count !== fi.count) fail('FDE count changed');
  for (let i = 0; i < fi.count; i++) {
    const pcBegin = fi.pcBegin[i];
    const want = inText(img, pcBegin) ? mapAddress(layout, pcBegin) : pcBegin;
    if (fo.pcBegin[i] !== want || fo.pcRange[i] !== fi.pcRange[i]) fail('FDE pc_begin does not follow its function', fi.address[i]);
    allowed.add(pcBeginFileOffset(fi, i), 4);
    rep.fdes++;
  }
  if (!img.ehFrameHdr || !img.ehFrameHdrTable) return;
  const h = parseEhFrameHdr(out.view, img.ehFrameHdr.sh_offset, img.ehFrameHdr.sh_size, img.ehFrameHdr.sh_addr);
  if (h.fdeCount !== img.ehFrameHdrTable.fdeCount) fail('.eh_frame_hdr count changed');
  const byAddr = new Map<number, number>(); // output FDE address -> its index
  for (let i = 0; i < fo.count; i++) byAddr.set(fo.address[i], i);
  const seen = new Set<number>();
  for (let i = 0; i < h.fdeCount; i++) {
    const fde = h.fdeAddress[i];
    const loc = h.initialLoc[i];
    const k = byAddr.get(fde);
    if (k === undefined || fo.pcBegin[k] !== loc) fail('.eh_frame_hdr entry does not match its FDE', fde);
    if (i > 0 && h.initialLoc[i - 1] > loc) fail('.eh_frame_hdr table not sorted', loc);
    seen.add(fde);
  }
  if (seen.size !== h.fdeCount) fail('.eh_frame_hdr lists an FDE twice');
  allowed.add(h.tableFileOffset, h.fdeCount * 8);
}

/** PC-relative words in data (jump tables and the like) named by static relocations. */
function verifyDataWords(img: Image, layout: Layout, out: ElfFile, rep: VerifyReport, allowed: Allowed): void {
  const inp = img.elf;
  const jt = jumpTableIndex(img, layout);
  for (const [secIndex, relocs] of img.staticRelocs) {
    const sec = inp.sections[secIndex];
    if (!(sec.sh_flags & SHF_ALLOC) || (sec.sh_flags & SHF_EXECINSTR) || sec === img.ehFrame) continue;
    for (let q = 0; q < relocs.count; q++) {
      if (relocs.r_type[q] !== R_X86_64_PC32 && relocs.r_type[q] !== R_X86_64_PLT32) continue;
      const f = relocs.r_offset[q];
      const off = vaddrToOffset(inp, f, 4);
      if (off === undefined) continue;
      const vin = inp.view.getInt32(off, true);
      const vout = out.view.getInt32(off, true);
      const sym = relocSymbol(img, relocs, q);
      if (sym === undefined || sym.st_shndx !== img.text.index) { if (vin !== vout) fail('PC-relative data word changed', f); continue; }
      // Same reading of the word as the rewriter (jump-table base proven by a lea, else the field
      // itself); the output word must reach the moved counterpart of the input target.
      const b = jumpTableBase(img, jt, f, vin) ?? f;
      if (vout !== mapAddress(layout, b + vin) - b) fail('PC-relative data word does not reach the moved target', f);
      allowed.add(off, 4);
      rep.dataWords++;
    }
  }
}

/** Nothing in the loadable non-code part changed outside the allowed ranges. */
function verifyNothingElseChanged(inp: ElfFile, output: Uint8Array, allocIn: SectionHeader[], allowed: MergedRanges): void {
  const inBuf = Buffer.from(inp.bytes.buffer, inp.bytes.byteOffset, inp.bytes.byteLength);
  const outBuf = Buffer.from(output.buffer, output.byteOffset, output.byteLength);
  const BLOCK = 256;
  for (const s of allocIn) {
    if ((s.sh_flags & SHF_EXECINSTR) || s.sh_type === SHT_NOBITS) continue;
    const end = s.sh_offset + s.sh_size;
    // Equal blocks are skipped by a native compare; a differing block is checked byte by byte.
    for (let b = s.sh_offset; b < end; b += BLOCK) {
      const e = Math.min(b + BLOCK, end);
      if (inBuf.compare(outBuf, b, e, b, e) === 0) continue;
      for (let o = b; o < e; o++) {
        if (inp.bytes[o] !== output[o] && !allowed.has(o)) fail(`unexplained change in ${s.name}`, s.sh_addr + (o - s.sh_offset));
      }
    }
  }
}

/** File ranges (offset, length) the output may change, as they are found. */
class Allowed {
  private readonly off: number[] = [];
  private readonly len: number[] = [];

  add(off: number, len: number): void {
    this.off.push(off);
    this.len.push(len);
  }

  merged(): MergedRanges {
    // The ranges come in a few ascending runs (symbols, relocations, FDEs ...): a merge sort of the
    // indexes is nearly linear here.
    const { off, len } = this;
    const order = new Int32Array(off.length);
    for (let i = 0; i < order.length; i++) order[i] = i;
    order.sort((x, y) => off[x] - off[y]);
    const starts: number[] = [];
    const ends: number[] = [];
    for (const i of order) {
      const a = off[i];
      const l = len[i];
      if (starts.length && a <= ends[ends.length - 1]) ends[ends.length - 1] = Math.max(ends[ends.length - 1], a + l);
      else { starts.push(a); ends.push(a + l); }
    }
    return new MergedRanges(starts, ends);
  }
}

/** Disjoint sorted ranges [starts[i], ends[i]): membership by binary search. */
class MergedRanges {
  constructor(private readonly starts: number[], private readonly ends: number[]) {}

  has(o: number): boolean {
    const { starts, ends } = this;
    let lo = 0;
    let hi = starts.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (starts[mid] > o) hi = mid - 1;
      else if (ends[mid] <= o) lo = mid + 1;
      else return true;
    }
    return false;
  }
}

function readDynRelocs(elf: ElfFile, dyn: { d_tag: number; d_val: number }[]) {
  const get = (t: number) => dyn.find((d) => d.d_tag === t)?.d_val;
  const res = [];
  const rela = get(DT_RELA);
  const relasz = get(DT_RELASZ) ?? 0;
  if (rela !== undefined && relasz) res.push(...readRelaRange(elf, vaddrToOffset(elf, rela, relasz)!, relasz / ELF64_RELA_SIZE));
  const jmp = get(DT_JMPREL);
  const jsz = get(DT_PLTRELSZ) ?? 0;
  if (jmp !== undefined && jsz && !(rela !== undefined && jmp >= rela && jmp < rela + relasz)) {
    res.push(...readRelaRange(elf, vaddrToOffset(elf, jmp, jsz)!, jsz / ELF64_RELA_SIZE));
  }
  return res;
}

/**
 * Lockstep comparison of input instructions [aFrom, aTo) of `a` with output instructions
 * [bFrom, bTo) of `b`, moved by `delta`; `mapAddress(layout, t)` gives where an input target must
 * land. (The layout, not a closure over it: a new closure per run made the optimized code of
 * these loops deoptimize again in each of a process's first randomizations.)
 */
function compareCode(
  inBytes: Uint8Array, inBase: number, a: DecodedRange, aFrom: number, aTo: number,
  outBytes: Uint8Array, outBase: number, b: DecodedRange, bFrom: number, bTo: number,
  delta: number, layout: Layout, rep: VerifyReport,
): void {
  let j = bFrom;
  // ra / rb: the next operand (index into refs) of each side.
  let ra = lowerBound(a.refs, aFrom);
  let rb = lowerBound(b.refs, bFrom);
  for (let i = aFrom; i < aTo; i++, j++) {
    if (j >= bTo) fail('output code ends early', a.ip[i]);
    const l = a.len[i];
    if (l !== b.len[j] || a.code[i] !== b.code[j] || b.ip[j] !== a.ip[i] + delta || b.code[j] === CODE_INVALID) fail('instruction differs after moving', a.ip[i]);
    const ia = a.ip[i] - inBase;
    const ib = b.ip[j] - outBase;
    const hasRef = ra < a.refs.length && a.refs[ra] === i;
    const outRef = rb < b.refs.length && b.refs[rb] === j;
    const fs = hasRef ? a.fieldOff[ra] : l;
    const fe = hasRef ? fs + a.fieldSize[ra] : l;
    for (let k = 0; k < fs; k++) if (inBytes[ia + k] !== outBytes[ib + k]) fail('instruction bytes differ after moving', a.ip[i]);
    for (let k = fe; k < l; k++) if (inBytes[ia + k] !== outBytes[ib + k]) fail('instruction bytes differ after moving', a.ip[i]);
    if (hasRef) {
      if (!outRef || b.refKind[rb] !== a.refKind[ra] || b.target[rb] !== mapAddress(layout, a.target[ra])) {
        fail(`operand reaches 0x${outRef ? b.target[rb].toString(16) : '?'}, want 0x${mapAddress(layout, a.target[ra]).toString(16)}`, a.ip[i]);
      }
      rep.pcRelOperands++;
      ra++;
    } else if (outRef) {
      fail('instruction differs after moving', a.ip[i]);
    }
    if (outRef) rb++;
    rep.instructions++;
  }
  if (j !== bTo) fail('output code has extra instructions', b.ip[j]);
}

/**
 * compareCode's checks made with native compares over whole ranges: per instruction, only the
 * ones with a PC-relative field are visited in JS. Returns false when anything differs, and
 * compareCode then finds and reports the first difference. Made once per input decoding `a`;
 * each call names the output decoding `b` it compares with.
 *
 * Instruction addresses need no per-instruction check here: within one decoding piece (and
 * within an input unit, whose atoms decode back to back: an instruction running across an atom
 * start is a refusal) each instruction starts where the previous one ended, so equal lengths and
 * equal first addresses give equal addresses throughout.
 */
function rangeComparer(inBytes: Uint8Array, inBase: number, a: DecodedRange, outBytes: Uint8Array, outBase: number, layout: Layout, rep: VerifyReport) {
  const buf = (x: Uint8Array | Uint16Array) => Buffer.from(x.buffer, x.byteOffset, x.byteLength);
  const aLen = buf(a.len), aCode = buf(a.code);
  const inBuf = buf(inBytes);
  const outBuf = buf(outBytes);
  // An undecodable input instruction anywhere: leave every range to the detailed comparison.
  // (The output's forms are then checked equal to the input's, so none of them is invalid.)
  const valid = !a.code.includes(CODE_INVALID);
  let scratch = Buffer.alloc(0);
  // Byte views of the last output decoding's arrays (the verifier reuses the same arrays).
  let bLenOf: Uint8Array | undefined;
  let bLen = aLen, bCode = aCode;
  return (b: DecodedRange, aFrom: number, aTo: number, bFrom: number, bTo: number, delta: number): boolean => {
    const n = aTo - aFrom;
    if (!valid || bTo - bFrom !== n) return false;
    if (n === 0) return true;
    if (b.ip[bFrom] !== a.ip[aFrom] + delta || b.ip[bTo - 1] !== a.ip[aTo - 1] + delta) return false;
    if (bLenOf !== b.len) { bLenOf = b.len; bLen = buf(b.len); bCode = buf(b.code); }
    if (aLen.compare(bLen, bFrom, bTo, aFrom, aTo) !== 0 || aCode.compare(bCode, 2 * bFrom, 2 * bTo, 2 * aFrom, 2 * aTo) !== 0) return false;
    // The same instructions carry operands, of the same kinds, reaching the moved targets.
    const ra0 = lowerBound(a.refs, aFrom);
    const refs = lowerBound(a.refs, aTo) - ra0;
    const rb0 = lowerBound(b.refs, bFrom);
    if (lowerBound(b.refs, bTo) - rb0 !== refs) return false;
    // Bytes: the output copy with the input's PC-relative fields put back must equal the input.
    const ia = a.ip[aFrom] - inBase;
    const ib = b.ip[bFrom] - outBase;
    const size = a.ip[aTo - 1] + a.len[aTo - 1] - a.ip[aFrom];
    if (scratch.length < size) scratch = Buffer.alloc(Math.max(size, 2 * scratch.length));
    outBuf.copy(scratch, 0, ib, ib + size);
    for (let q = 0; q < refs; q++) {
      const ra = ra0 + q;
      const rb = rb0 + q;
      const i = a.refs[ra];
      if (b.refs[rb] - bFrom !== i - aFrom || b.refKind[rb] !== a.refKind[ra] || b.target[rb] !== mapAddress(layout, a.target[ra])) return false;
      const f = a.ip[i] - a.ip[aFrom] + a.fieldOff[ra];
      for (let k = 0; k < a.fieldSize[ra]; k++) scratch[f + k] = inBytes[ia + f + k];
    }
    if (inBuf.compare(scratch, 0, size, ia, ia + size) !== 0) return false;
    rep.instructions += n;
    rep.pcRelOperands += refs;
    return true;
  };
}

function verifyText(img: Image, layout: Layout, out: ElfFile, rep: VerifyReport, mode: VerifyMode): void {
  const { units, code: inCode } = layout.plan;
  const t0 = img.textStart;
  const inBytes = img.elf.bytes.subarray(img.text.sh_offset, img.text.sh_offset + img.text.sh_size);
  const outText = sectionByName(out, '.text')!;
  const outBytes = out.bytes.subarray(outText.sh_offset, outText.sh_offset + outText.sh_size);
  // Placement: inside .text, aligned, no overlap; gaps are int3.
  const placed = units.map((u) => ({ s: layout.newStart[u.index], e: layout.newStart[u.index] + (u.coreEnd - u.start), u }));
  placed.sort((x, y) => x.s - y.s);
  let cur = t0;
  for (const p of placed) {
    if (p.s < cur || p.e > img.textEnd) fail('units overlap or leave .text', p.s);
    if ((p.s - p.u.start) % p.u.align !== 0) fail('unit misaligned', p.s);
    for (let a = cur; a < p.s; a++) if (outBytes[a - t0] !== 0xcc) fail('gap not filled with int3', a);
    cur = p.e;
  }
  for (let a = cur; a < img.textEnd; a++) if (outBytes[a - t0] !== 0xcc) fail('gap not filled with int3', a);

  // 'decode': iced-x86 decodes each placed unit of the output .text on its own (decoding starts
  // at the unit's new address and stops at its end). Each unit is then compared in one lockstep
  // walk: the same instruction count, each at the input address plus the unit's shift, so every
  // input atom start is an output instruction start too. Units are decoded one at a time into
  // reused arrays (see SpanDecoder), each compared right after its decoding.
  const spans = mode === 'decode' ? new SpanDecoder(outBytes, t0, placed.reduce((m, p) => Math.max(m, p.e - p.s), 0)) : undefined;
  const same = spans ? rangeComparer(inBytes, t0, inCode, outBytes, t0, layout, rep) : undefined;
  try {
    for (const u of units) {
      const ns = layout.newStart[u.index];
      const len = u.coreEnd - u.start;
      if (len === 0) continue;
      const b = spans ? spans.decode(ns, ns + len) : rereadUnit(inCode, u.first, u.coreLast, outBytes, t0, ns - u.start);
      const bTo = b.count;
      if (bTo <= 0 || b.ip[bTo - 1] + b.len[bTo - 1] !== ns + len) fail('output unit does not decode to its own extent', ns);
      const delta = ns - u.start;
      if (same && same(b, u.first, u.coreLast, 0, bTo, delta)) continue;
      compareCode(inBytes, t0, inCode, u.first, u.coreLast, outBytes, t0, b, 0, bTo, delta, layout, rep);
    }
  } finally {
    spans?.free();
  }
}

/**
 * The output instructions [from, to) of `a` at the input's boundaries (mode 'fields'): same forms
 * and lengths, PC-relative targets recomputed from the output's field bytes.
 */
function rereadUnit(a: DecodedRange, from: number, to: number, outBytes: Uint8Array, outBase: number, delta: number): DecodedRange {
  const n = to - from;
  const r0 = lowerBound(a.refs, from);
  const nr = lowerBound(a.refs, to) - r0;
  const r = {
    start: a.ip[from] + delta, count: n, ip: a.ip.slice(from, to), len: a.len.slice(from, to), code: a.code.slice(from, to), flags: a.flags.slice(from, to),
    refs: a.refs.slice(r0, r0 + nr).map((k) => k - from), refKind: a.refKind.slice(r0, r0 + nr), fieldOff: a.fieldOff.slice(r0, r0 + nr),
    fieldSize: a.fieldSize.slice(r0, r0 + nr), target: new Float64Array(nr),
  };
  for (let j = 0; j < n; j++) r.ip[j] += delta; // same section, so the same width fits
  const view = new DataView(outBytes.buffer, outBytes.byteOffset, outBytes.byteLength);
  for (let q = 0; q < nr; q++) {
    const ip = r.ip[r.refs[q]];
    const at = ip + r.fieldOff[q] - outBase;
    const v = r.fieldSize[q] === 4 ? view.getInt32(at, true) : r.fieldSize[q] === 1 ? view.getInt8(at) : NaN;
    r.target[q] = ip + r.len[r.refs[q]] + v;
  }
  return r;
}

function verifyOtherCode(img: Image, layout: Layout, out: ElfFile, rep: VerifyReport, mode: VerifyMode): void {
  img.otherExec.forEach((s, i) => {
    const a = layout.plan.otherExecDecoded[i];
    const inBytes = img.elf.bytes.subarray(s.sh_offset, s.sh_offset + s.sh_size);
    const outBytes = out.bytes.subarray(s.sh_offset, s.sh_offset + s.sh_size);
    const b = mode === 'decode' ? decodeRange(outBytes, s.sh_addr) : rereadUnit(a, 0, a.count, outBytes, s.sh_addr, 0);
    if (rangeComparer(inBytes, s.sh_addr, a, outBytes, s.sh_addr, layout, rep)(b, 0, a.count, 0, b.count, 0)) return;
    compareCode(inBytes, s.sh_addr, a, 0, a.count, outBytes, s.sh_addr, b, 0, b.count, 0, layout, rep);
  });
}
