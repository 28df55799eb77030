/**
 * .eh_frame and .eh_frame_hdr (LSB "Exception Frames", DWARF CFI with GNU augmentations).
 *
 * Moving whole functions keeps every FDE's instructions and LSDA valid (they are relative to the
 * function start); only each FDE's pc_begin must follow its function, and the binary-search table
 * in .eh_frame_hdr must be rebuilt and re-sorted by the new start addresses.
 */
import { ElfFormatError, ElfRefusal } from './errors';
import { Cursor } from './reader';

export const DW_EH_PE_absptr = 0x00;
export const DW_EH_PE_udata4 = 0x03;
export const DW_EH_PE_sdata4 = 0x0b;
export const DW_EH_PE_pcrel = 0x10;
export const DW_EH_PE_datarel = 0x30;
export const DW_EH_PE_omit = 0xff;

/**
 * The FDEs of an .eh_frame section, as flat arrays indexed by FDE number (file order). SQLite has
 * about 2000 FDEs and both the input and the verifier's reading of the output are parsed on every
 * randomization, so an object per FDE was steady allocation churn.
 */
export interface FdeTable {
  readonly count: number;
  /** Virtual address of each FDE record (what .eh_frame_hdr points to). */
  readonly address: Float64Array;
  /** Function start each FDE covers. */
  readonly pcBegin: Float64Array;
  readonly pcRange: Uint32Array;
  /** File offset minus virtual address for the whole section: a record's file offset is address + fileDelta. */
  readonly fileDelta: number;
}

/** Offset of an FDE's pc_begin field from the start of its record (after length and CIE pointer). */
export const FDE_PC_BEGIN_OFFSET = 8;

/** Virtual address of FDE i's pc_begin field. */
export function pcBeginField(t: FdeTable, i: number): number {
  return t.address[i] + FDE_PC_BEGIN_OFFSET;
}

/** File offset of FDE i's pc_begin field. */
export function pcBeginFileOffset(t: FdeTable, i: number): number {
  return t.address[i] + t.fileDelta + FDE_PC_BEGIN_OFFSET;
}

/** A copy of `a` with room for `n` elements (growth by doubling while parsing). */
function grown<T extends Float64Array | Uint32Array>(a: T, n: number): T {
  const b = new (a.constructor as new (n: number) => T)(n);
  b.set(a);
  return b;
}

function uleb(c: Cursor, o: { p: number }, end: number): number {
  let result = 0;
  let mul = 1;
  for (let i = 0; i < 10; i++) {
    if (o.p >= end) throw new ElfFormatError(o.p, 'LEB128 past end of record');
    const b = c.u8(o.p++, 'LEB128');
    result += (b & 0x7f) * mul;
    if ((b & 0x80) === 0) return result;
    mul *= 128;
  }
  throw new ElfFormatError(o.p, 'LEB128 too long');
}

function encodedSize(enc: number, at: number): number {
  switch (enc & 0x0f) {
    case DW_EH_PE_absptr: return 8;
    case 0x02: case 0x0a: return 2; // udata2, sdata2
    case DW_EH_PE_udata4: case DW_EH_PE_sdata4: return 4;
    case 0x04: case 0x0c: return 8; // udata8, sdata8
    default: throw new ElfRefusal(`unsupported DWARF pointer encoding 0x${enc.toString(16)} in .eh_frame`, at);
  }
}

/**
 * Parses every FDE of an .eh_frame section held at file offset `fileOff`, loaded at `addr`.
 * Only pcrel|sdata4 pc_begin is accepted (what GCC and GNU ld emit for x86-64 PIC); anything
 * else is a refusal rather than a guess.
 */
export function parseEhFrame(view: DataView, fileOff: number, size: number, addr: number): FdeTable {
  const c = new Cursor(view);
  const end = fileOff + size;
  const cieEnc = new Map<number, number>(); // CIE file offset -> FDE pointer encoding
  let address = new Float64Array(64);
  let pcBeginA = new Float64Array(64);
  let pcRangeA = new Uint32Array(64);
  let n = 0;
  let p = fileOff;
  while (p + 4 <= end) {
    const recStart = p;
    let length = c.u32(p, 'CFI record length');
    p += 4;
    if (length === 0) continue; // zero terminator (or padding) record
    if (length === 0xffffffff) throw new ElfRefusal('64-bit DWARF CFI record in .eh_frame', recStart);
    const bodyStart = p;
    const recEnd = bodyStart + length;
    if (recEnd > end || length < 4) throw new ElfFormatError(recStart, 'CFI record past end of .eh_frame', length);
    const id = c.u32(p, 'CIE id / CIE pointer');
    if (id === 0) {
      // CIE
      const o = { p: p + 4 };
      const version = c.u8(o.p++, 'CIE version');
      if (version !== 1 && version !== 3) throw new ElfRefusal(`unsupported CIE version ${version}`, recStart);
      let aug = '';
      for (;;) {
        if (o.p >= recEnd) throw new ElfFormatError(recStart, 'unterminated CIE augmentation string');
        const ch = c.u8(o.p++, 'CIE augmentation');
        if (ch === 0) break;
        aug += String.fromCharCode(ch);
      }
      uleb(c, o, recEnd); // code alignment
      uleb(c, o, recEnd); // data alignment (sleb; only skipped)
      if (version === 1) o.p++; else uleb(c, o, recEnd); // return address register
      let fdeEnc = DW_EH_PE_absptr;
      if (aug.startsWith('z')) {
        uleb(c, o, recEnd); // augmentation data length
        for (const ch of aug.slice(1)) {
          if (ch === 'R') fdeEnc = c.u8(o.p++, 'FDE encoding');
          else if (ch === 'L') o.p++;
          else if (ch === 'P') { const penc = c.u8(o.p++, 'personality encoding'); o.p += encodedSize(penc, recStart); }
          else if (ch === 'S' || ch === 'B') { /* no data */ }
          else throw new ElfRefusal(`unsupported CIE augmentation '${aug}'`, recStart);
        }
      } else if (aug !== '') {
        throw new ElfRefusal(`unsupported CIE augmentation '${aug}'`, recStart);
      }
      cieEnc.set(recStart, fdeEnc);
    } else {
      const ciePos = bodyStart - id;
      const enc = cieEnc.get(ciePos);
      if (enc === undefined) throw new ElfFormatError(recStart, 'FDE points to no CIE seen before it', id);
      if (enc !== (DW_EH_PE_pcrel | DW_EH_PE_sdata4)) throw new ElfRefusal(`unsupported FDE pointer encoding 0x${enc.toString(16)}`, recStart);
      const field = recStart + FDE_PC_BEGIN_OFFSET; // = bodyStart + 4
      if (field + 8 > recEnd) throw new ElfFormatError(recStart, 'FDE too short');
      const fieldAddr = addr + (field - fileOff);
      const pcBegin = fieldAddr + c.i32(field, 'FDE pc_begin');
      const pcRange = c.u32(field + 4, 'FDE pc_range');
      if (n === address.length) {
        address = grown(address, 2 * n);
        pcBeginA = grown(pcBeginA, 2 * n);
        pcRangeA = grown(pcRangeA, 2 * n);
      }
      address[n] = addr + (recStart - fileOff);
      pcBeginA[n] = pcBegin;
      pcRangeA[n] = pcRange;
      n++;
    }
    p = recEnd;
  }
  return { count: n, address: address.subarray(0, n), pcBegin: pcBeginA.subarray(0, n), pcRange: pcRangeA.subarray(0, n), fileDelta: fileOff - addr };
}

export interface EhFrameHdr {
  readonly version: number;
  readonly tableEnc: number;
  readonly fdeCount: number;
  /** File offset of the first table entry. */
  readonly tableFileOffset: number;
  /** The table, flat: entry i is (initialLoc[i], fdeAddress[i]). */
  readonly initialLoc: Float64Array;
  readonly fdeAddress: Float64Array;
}

/** Parses .eh_frame_hdr; only the datarel|sdata4 table GNU ld writes is accepted. */
export function parseEhFrameHdr(view: DataView, fileOff: number, size: number, addr: number): EhFrameHdr {
  const c = new Cursor(view);
  if (size < 4) throw new ElfFormatError(fileOff, '.eh_frame_hdr too short', size);
  const version = c.u8(fileOff, 'eh_frame_hdr version');
  const ptrEnc = c.u8(fileOff + 1, 'eh_frame_ptr_enc');
  const countEnc = c.u8(fileOff + 2, 'fde_count_enc');
  const tableEnc = c.u8(fileOff + 3, 'table_enc');
  if (version !== 1) throw new ElfRefusal(`unsupported .eh_frame_hdr version ${version}`, fileOff);
  if (ptrEnc !== (DW_EH_PE_pcrel | DW_EH_PE_sdata4) || countEnc !== DW_EH_PE_udata4 || tableEnc !== (DW_EH_PE_datarel | DW_EH_PE_sdata4)) {
    throw new ElfRefusal('unsupported .eh_frame_hdr encodings', fileOff);
  }
  const fdeCount = c.u32(fileOff + 8, 'fde_count');
  const tableFileOffset = fileOff + 12;
  if (fdeCount * 8 > size - 12) throw new ElfFormatError(fileOff + 8, '.eh_frame_hdr table past end of section', fdeCount);
  const initialLoc = new Float64Array(fdeCount);
  const fdeAddress = new Float64Array(fdeCount);
  for (let i = 0; i < fdeCount; i++) {
    const o = tableFileOffset + i * 8;
    initialLoc[i] = addr + c.i32(o, 'initial_location');
    fdeAddress[i] = addr + c.i32(o + 4, 'fde address');
  }
  return { version, tableEnc, fdeCount, tableFileOffset, initialLoc, fdeAddress };
}
