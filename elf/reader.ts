/**
 * A typed, bounded ELF64 little-endian reader.
 *
 * Reading is kept apart from interpreting (Go debug/elf style): this module exposes headers,
 * sections, segments, symbols, relocations, the dynamic section and notes, and knows nothing of
 * shuffling. Every record read is bounds-checked against the file; a malformed file gives an
 * ElfFormatError carrying the offset of the bad record, never an exception from a DataView or
 * an allocation proportional to a count field (counts are checked against the file size first,
 * so memory stays bounded by the input size). Links are followed one hop only (rela -> symtab
 * -> strtab), so cyclic sh_link chains cannot loop.
 */
import { ElfFormatError } from './errors';
import {
  Dyn, ELF64_DYN_SIZE, ELF64_EHDR_SIZE, ELF64_PHDR_SIZE, ELF64_RELA_SIZE, ELF64_SHDR_SIZE,
  ELF64_SYM_SIZE, ELFCLASS64, ELFDATA2LSB, ELFMAG, EI_CLASS, EI_DATA, FileHeader, Note,
  ProgramHeader, PT_DYNAMIC, Rela, SectionHeader, SHN_XINDEX, SHT_DYNSYM, SHT_NOBITS, SHT_NOTE,
  SHT_RELA, SHT_STRTAB, SHT_SYMTAB, Symbol, DT_NULL, SHT_DYNAMIC, SHF_ALLOC, NT_GNU_BUILD_ID,
} from './types';

/** A parsed ELF file: the bytes plus the tables every later phase needs. */
export interface ElfFile {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly header: FileHeader;
  readonly sections: readonly SectionHeader[];
  readonly segments: readonly ProgramHeader[];
}

/** Little-endian reads with bounds checks; `what` names the record for the error message. */
export class Cursor {
  constructor(readonly view: DataView) {}
  private check(off: number, n: number, what: string): void {
    if (!Number.isSafeInteger(off) || off < 0 || off + n > this.view.byteLength) {
      throw new ElfFormatError(off, `${what} past end of file (size ${this.view.byteLength})`);
    }
  }
  u8(off: number, what: string): number { this.check(off, 1, what); return this.view.getUint8(off); }
  u16(off: number, what: string): number { this.check(off, 2, what); return this.view.getUint16(off, true); }
  u32(off: number, what: string): number { this.check(off, 4, what); return this.view.getUint32(off, true); }
  i32(off: number, what: string): number { this.check(off, 4, what); return this.view.getInt32(off, true); }
  // 64-bit fields are read as two 32-bit halves: tables hold 10^5 of them, and a BigInt per read
  // costs an allocation. Anything outside ±(2^53 - 1) is refused, exactly as a BigInt check would.
  u64(off: number, what: string): number {
    this.check(off, 8, what);
    const hi = this.view.getUint32(off + 4, true);
    // Values above 2^53 cannot be addresses or sizes in a file we can hold in memory.
    if (hi >= 0x200000) throw new ElfFormatError(off, `${what}: value too large`, this.view.getBigUint64(off, true).toString());
    const lo = this.view.getUint32(off, true);
    // hi * 2^32 is a double even when hi is 0: return `lo` itself then, so that small values stay
    // small integers (a double address makes every later sum with it allocate in unoptimized code).
    return hi === 0 ? lo : hi * 0x100000000 + lo;
  }
  i64(off: number, what: string): number {
    this.check(off, 8, what);
    const hi = this.view.getInt32(off + 4, true);
    const lo = this.view.getUint32(off, true);
    // In range when |value| <= 2^53 - 1: hi in [-2^21, 2^21), and not -2^53 itself.
    if (hi >= 0x200000 || hi < -0x200000 || (hi === -0x200000 && lo === 0)) {
      throw new ElfFormatError(off, `${what}: value out of range`, this.view.getBigInt64(off, true).toString());
    }
    if (hi === 0) return lo;
    if (hi === -1 && lo >= 0x80000000) return lo | 0; // a small negative value, as an int32
    return hi * 0x100000000 + lo;
  }
}

function cursorOf(elf: ElfFile): Cursor {
  return new Cursor(elf.view);
}

/**
 * Names are kept to this many bytes. Longer names (possible in C++) are truncated for display and
 * comparison only; the cap keeps a crafted string table (one huge string referenced at every
 * offset) from costing time quadratic in the file size.
 */
export const MAX_NAME = 1024;

/**
 * A string table (a section's byte range). A name is read up to its NUL or MAX_NAME bytes,
 * whichever comes first; whether a longer name is terminated at all is answered by the position
 * of the table's last NUL, found once. Every lookup is then O(MAX_NAME) at most however the table
 * is built, with no per-byte index of the table (4 bytes per table byte, rebuilt by every reader
 * of the table, was most of the memory reading symbols touched).
 */
class StringTable {
  private lastNul = -2; // -2: not looked for yet; -1: the table has no NUL
  /** The file as one Buffer, made on the first name read: names are sliced from it, no Buffer per name. */
  private file: Buffer | undefined;
  constructor(private readonly bytes: Uint8Array, private readonly off: number, private readonly size: number) {}
  get(idx: number, recordOff: number, what: string): string {
    const len = this.check(idx, recordOff, what);
    const f = (this.file ??= Buffer.from(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength));
    return f.toString('latin1', this.off + idx, this.off + idx + len);
  }
  /** Validates a name index (in range, NUL-terminated); returns the kept name length. */
  check(idx: number, recordOff: number, what: string): number {
    if (idx >= this.size) throw new ElfFormatError(recordOff, `bad ${what} name index`, idx);
    const b = this.bytes;
    const base = this.off + idx;
    const stop = Math.min(this.size - idx, MAX_NAME);
    for (let k = 0; k < stop; k++) if (b[base + k] === 0) return k;
    // No NUL in the first MAX_NAME bytes: the name is kept at MAX_NAME bytes if a NUL ends it later.
    if (this.lastNul === -2) {
      let i = this.size - 1;
      while (i >= 0 && b[this.off + i] !== 0) i--;
      this.lastNul = i;
    }
    if (this.lastNul < idx + stop) throw new ElfFormatError(recordOff, `unterminated ${what} name`, idx);
    return MAX_NAME;
  }
}

export function readElf(input: Uint8Array): ElfFile {
  const bytes = input;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const c = new Cursor(view);
  for (let i = 0; i < 4; i++) if (bytes[i] !== ELFMAG[i]) throw new ElfFormatError(0, 'bad magic number');
  if (bytes.length < ELF64_EHDR_SIZE) throw new ElfFormatError(0, 'file shorter than an ELF64 header', bytes.length);
  if (bytes[EI_CLASS] !== ELFCLASS64) throw new ElfFormatError(EI_CLASS, 'not ELFCLASS64', bytes[EI_CLASS]);
  if (bytes[EI_DATA] !== ELFDATA2LSB) throw new ElfFormatError(EI_DATA, 'not ELFDATA2LSB', bytes[EI_DATA]);

  const e_phoff = c.u64(32, 'e_phoff');
  const e_shoff = c.u64(40, 'e_shoff');
  const e_ehsize = c.u16(52, 'e_ehsize');
  const e_phentsize = c.u16(54, 'e_phentsize');
  let e_phnum = c.u16(56, 'e_phnum');
  const e_shentsize = c.u16(58, 'e_shentsize');
  let e_shnum = c.u16(60, 'e_shnum');
  let e_shstrndx = c.u16(62, 'e_shstrndx');
  if (e_ehsize !== ELF64_EHDR_SIZE) throw new ElfFormatError(52, 'bad e_ehsize', e_ehsize);

  // Extended numbering: counts and the string table index live in section 0 when they overflow.
  if (e_shoff !== 0) {
    if (e_shentsize !== ELF64_SHDR_SIZE) throw new ElfFormatError(58, 'bad e_shentsize', e_shentsize);
    if (e_shnum === 0) e_shnum = c.u64(e_shoff + 32, 'section 0 sh_size (extended e_shnum)');
    if (e_shstrndx === SHN_XINDEX) e_shstrndx = c.u32(e_shoff + 40, 'section 0 sh_link (extended e_shstrndx)');
    if (e_phnum === 0xffff) e_phnum = c.u32(e_shoff + 44, 'section 0 sh_info (extended e_phnum)');
  } else {
    e_shnum = 0;
  }
  // Counts are bounded by the file size before anything is allocated for them.
  if (e_shnum > 0 && e_shoff + e_shnum * ELF64_SHDR_SIZE > bytes.length) {
    throw new ElfFormatError(40, 'section header table past end of file', e_shoff);
  }
  if (e_phnum > 0) {
    if (e_phentsize !== ELF64_PHDR_SIZE) throw new ElfFormatError(54, 'bad e_phentsize', e_phentsize);
    if (e_phoff + e_phnum * ELF64_PHDR_SIZE > bytes.length) throw new ElfFormatError(32, 'program header table past end of file', e_phoff);
  }
  if (e_shnum > 0 && e_shstrndx >= e_shnum) throw new ElfFormatError(62, 'e_shstrndx out of range', e_shstrndx);

  const header: FileHeader = {
    e_type: c.u16(16, 'e_type'), e_machine: c.u16(18, 'e_machine'), e_version: c.u32(20, 'e_version'),
    e_entry: c.u64(24, 'e_entry'), e_phoff, e_shoff, e_flags: c.u32(48, 'e_flags'), e_ehsize,
    e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx,
  };

  const segments: ProgramHeader[] = [];
  for (let i = 0; i < e_phnum; i++) {
    const o = e_phoff + i * ELF64_PHDR_SIZE;
    const ph: ProgramHeader = {
      index: i, headerOffset: o, p_type: c.u32(o, 'p_type'), p_flags: c.u32(o + 4, 'p_flags'),
      p_offset: c.u64(o + 8, 'p_offset'), p_vaddr: c.u64(o + 16, 'p_vaddr'), p_paddr: c.u64(o + 24, 'p_paddr'),
      p_filesz: c.u64(o + 32, 'p_filesz'), p_memsz: c.u64(o + 40, 'p_memsz'), p_align: c.u64(o + 48, 'p_align'),
    };
    if (ph.p_offset + ph.p_filesz > bytes.length) throw new ElfFormatError(o, 'segment contents past end of file', ph.p_offset);
    if (ph.p_filesz > ph.p_memsz) throw new ElfFormatError(o, 'p_filesz larger than p_memsz', ph.p_filesz);
    segments.push(ph);
  }

  // Built by one literal with every field (the name filled in below), so that all headers share
  // one hidden class: a spread copy per header gave them several, and code reading them was
  // deoptimized again in each of a process's first randomizations.
  const sections: { -readonly [K in keyof SectionHeader]: SectionHeader[K] }[] = [];
  for (let i = 0; i < e_shnum; i++) {
    const o = e_shoff + i * ELF64_SHDR_SIZE;
    const sh = {
      index: i, name: '', headerOffset: o, sh_name: c.u32(o, 'sh_name'), sh_type: c.u32(o + 4, 'sh_type'),
      sh_flags: c.u64(o + 8, 'sh_flags'), sh_addr: c.u64(o + 16, 'sh_addr'), sh_offset: c.u64(o + 24, 'sh_offset'),
      sh_size: c.u64(o + 32, 'sh_size'), sh_link: c.u32(o + 40, 'sh_link'), sh_info: c.u32(o + 44, 'sh_info'),
      sh_addralign: c.u64(o + 48, 'sh_addralign'), sh_entsize: c.u64(o + 56, 'sh_entsize'),
    };
    if (i > 0 && sh.sh_type !== SHT_NOBITS && sh.sh_offset + sh.sh_size > bytes.length) {
      throw new ElfFormatError(o, 'section contents past end of file', sh.sh_offset);
    }
    if (i > 0 && sh.sh_link >= e_shnum) throw new ElfFormatError(o + 40, 'sh_link out of range', sh.sh_link);
    sections.push(sh);
  }
  if (e_shnum > 0) {
    const strtab = sections[e_shstrndx];
    if (strtab.sh_type !== SHT_STRTAB) throw new ElfFormatError(strtab.headerOffset, 'section name table is not SHT_STRTAB', strtab.sh_type);
    const names = new StringTable(bytes, strtab.sh_offset, strtab.sh_size);
    for (const sh of sections) if (sh.index !== 0) sh.name = names.get(sh.sh_name, sh.headerOffset, 'section');
  }
  return { bytes, view, header, sections, segments };
}

/** The bytes of a section (empty for SHT_NOBITS); a view, not a copy. */
export function sectionData(elf: ElfFile, sh: SectionHeader): Uint8Array {
  if (sh.sh_type === SHT_NOBITS) return new Uint8Array(0);
  return elf.bytes.subarray(sh.sh_offset, sh.sh_offset + sh.sh_size);
}

export function sectionByName(elf: ElfFile, name: string): SectionHeader | undefined {
  return elf.sections.find((s) => s.name === name);
}

/** Maps a virtual address to a file offset through the PT_LOAD segments; undefined if not in the file. */
export function vaddrToOffset(elf: ElfFile, addr: number, len = 1): number | undefined {
  for (const ph of elf.segments) {
    if (ph.p_type !== 1 /* PT_LOAD */) continue;
    if (addr >= ph.p_vaddr && addr + len <= ph.p_vaddr + ph.p_filesz) return ph.p_offset + (addr - ph.p_vaddr);
  }
  return undefined;
}

function checkEntSize(sh: SectionHeader, want: number, what: string): number {
  if (sh.sh_entsize !== want) throw new ElfFormatError(sh.headerOffset + 56, `bad sh_entsize for ${what}`, sh.sh_entsize);
  if (sh.sh_size % want !== 0) throw new ElfFormatError(sh.headerOffset + 32, `${what} size not a multiple of its entry size`, sh.sh_size);
  return sh.sh_size / want;
}

/**
 * A symbol whose name is decoded on first use: tables can hold 10^5 symbols and only a few names
 * are ever looked at (reports, tests), so reading stays linear in the table size.
 */
class SymbolRecord implements Symbol {
  private cached: string | undefined;
  readonly bind: number;
  readonly type: number;
  constructor(
    readonly index: number, readonly fileOffset: number, readonly st_name: number, readonly st_info: number,
    readonly st_other: number, readonly st_shndx: number, readonly st_value: number, readonly st_size: number,
    private readonly strings: StringTable,
  ) {
    this.bind = st_info >> 4;
    this.type = st_info & 0xf;
  }
  get name(): string {
    if (this.cached === undefined) this.cached = this.st_name === 0 ? '' : this.strings.get(this.st_name, this.fileOffset, 'symbol');
    return this.cached;
  }
}

/** A symbol table's entry count and the string table its names are in, both checked. */
function symbolTable(elf: ElfFile, sh: SectionHeader): { n: number; names: StringTable } {
  if (sh.sh_type !== SHT_SYMTAB && sh.sh_type !== SHT_DYNSYM) throw new ElfFormatError(sh.headerOffset + 4, 'not a symbol table', sh.sh_type);
  const n = checkEntSize(sh, ELF64_SYM_SIZE, sh.name);
  const str = elf.sections[sh.sh_link];
  if (!str || str.sh_type !== SHT_STRTAB) throw new ElfFormatError(sh.headerOffset + 40, 'symbol table sh_link is not a string table', sh.sh_link);
  return { n, names: new StringTable(elf.bytes, str.sh_offset, str.sh_size) };
}

/** Symbols of a SHT_SYMTAB or SHT_DYNSYM section, names resolved through its sh_link string table. */
export function readSymbols(elf: ElfFile, sh: SectionHeader): Symbol[] {
  const { n, names } = symbolTable(elf, sh);
  const c = cursorOf(elf);
  const out: Symbol[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const o = sh.sh_offset + i * ELF64_SYM_SIZE;
    const st_name = c.u32(o, 'st_name');
    const st_info = c.u8(o + 4, 'st_info');
    if (st_name !== 0) names.check(st_name, o, 'symbol'); // malformed names fail here, not later
    out[i] = new SymbolRecord(
      i, o, st_name, st_info, c.u8(o + 5, 'st_other'), c.u16(o + 6, 'st_shndx'), c.u64(o + 8, 'st_value'), c.u64(o + 16, 'st_size'), names,
    );
  }
  return out;
}

/**
 * The fields of a symbol table as flat arrays, with the same reads and checks as `readSymbols`
 * (names are validated, not decoded). For a reader that compares whole tables, as the verifier
 * does with the output's symbols on every randomization: no object per symbol.
 */
export interface SymbolFields {
  readonly count: number;
  readonly st_name: Uint32Array;
  readonly st_info: Uint8Array;
  readonly st_shndx: Uint16Array;
  readonly st_value: Float64Array;
  readonly st_size: Float64Array;
}

export function readSymbolFields(elf: ElfFile, sh: SectionHeader): SymbolFields {
  const { n, names } = symbolTable(elf, sh);
  const c = cursorOf(elf);
  const t = { count: n, st_name: new Uint32Array(n), st_info: new Uint8Array(n), st_shndx: new Uint16Array(n), st_value: new Float64Array(n), st_size: new Float64Array(n) };
  for (let i = 0; i < n; i++) {
    const o = sh.sh_offset + i * ELF64_SYM_SIZE;
    const st_name = c.u32(o, 'st_name');
    t.st_info[i] = c.u8(o + 4, 'st_info');
    if (st_name !== 0) names.check(st_name, o, 'symbol');
    t.st_name[i] = st_name;
    c.u8(o + 5, 'st_other'); // read for the same bounds checks as readSymbols
    t.st_shndx[i] = c.u16(o + 6, 'st_shndx');
    t.st_value[i] = c.u64(o + 8, 'st_value');
    t.st_size[i] = c.u64(o + 16, 'st_size');
  }
  return t;
}

/** Relocations of a SHT_RELA section. */
export function readRelas(elf: ElfFile, sh: SectionHeader): Rela[] {
  if (sh.sh_type !== SHT_RELA) throw new ElfFormatError(sh.headerOffset + 4, 'not a SHT_RELA section', sh.sh_type);
  const n = checkEntSize(sh, ELF64_RELA_SIZE, sh.name);
  return readRelaRange(elf, sh.sh_offset, n);
}

/** Relocations of a SHT_RELA section as flat arrays: `readRelas` without an object per entry. */
export interface RelaTable {
  readonly count: number;
  /** File offset of entry 0; entry q is at fileOffset + q * ELF64_RELA_SIZE. */
  readonly fileOffset: number;
  /** 32-bit when every offset fits (see `narrowed`). */
  readonly r_offset: Uint32Array | Int32Array | Float64Array;
  readonly r_type: Uint32Array;
  readonly r_sym: Uint32Array;
  readonly r_addend: Float64Array;
}

/** Same reads and checks as `readRelas`, into a RelaTable. */
export function readRelaTable(elf: ElfFile, sh: SectionHeader): RelaTable {
  if (sh.sh_type !== SHT_RELA) throw new ElfFormatError(sh.headerOffset + 4, 'not a SHT_RELA section', sh.sh_type);
  const n = checkEntSize(sh, ELF64_RELA_SIZE, sh.name);
  const off = sh.sh_offset;
  if (off + n * ELF64_RELA_SIZE > elf.bytes.length) throw new ElfFormatError(off, 'relocation table past end of file', n);
  const c = cursorOf(elf);
  const t = { count: n, fileOffset: off, r_offset: new Float64Array(n), r_type: new Uint32Array(n), r_sym: new Uint32Array(n), r_addend: new Float64Array(n) };
  for (let i = 0; i < n; i++) {
    const o = off + i * ELF64_RELA_SIZE;
    t.r_offset[i] = c.u64(o, 'r_offset');
    t.r_type[i] = c.u32(o + 8, 'r_info');
    t.r_sym[i] = c.u32(o + 12, 'r_info');
    t.r_addend[i] = c.i64(o + 16, 'r_addend');
  }
  return { ...t, r_offset: narrowed(t.r_offset) };
}

/**
 * `a` as 32-bit integers when every value fits (as in every real library), else `a` itself:
 * reading an element of a Float64Array makes a heap number in unoptimized code, and the first
 * randomizations in a process run much of their code unoptimized.
 */
export function narrowed(a: Float64Array): Int32Array | Uint32Array | Float64Array {
  let min = 0;
  let max = 0;
  for (let i = 0; i < a.length; i++) {
    const v = a[i];
    if (v < min) min = v;
    if (v > max) max = v;
  }
  if (min >= -0x80000000 && max <= 0x7fffffff) return Int32Array.from(a);
  if (min >= 0 && max <= 0xffffffff) return Uint32Array.from(a);
  return a;
}

/** `n` Elf64_Rela records at file offset `off` (used for DT_RELA / DT_JMPREL tables too). */
export function readRelaRange(elf: ElfFile, off: number, n: number): Rela[] {
  if (off + n * ELF64_RELA_SIZE > elf.bytes.length) throw new ElfFormatError(off, 'relocation table past end of file', n);
  const c = cursorOf(elf);
  const out: Rela[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const o = off + i * ELF64_RELA_SIZE;
    const infoLo = c.u32(o + 8, 'r_info');
    const infoHi = c.u32(o + 12, 'r_info');
    out[i] = { fileOffset: o, r_offset: c.u64(o, 'r_offset'), r_type: infoLo, r_sym: infoHi, r_addend: c.i64(o + 16, 'r_addend') };
  }
  return out;
}

/** The dynamic table, from PT_DYNAMIC (what the loader uses), else from SHT_DYNAMIC; stops at DT_NULL. */
export function readDynamic(elf: ElfFile): Dyn[] {
  let off: number | undefined;
  let size = 0;
  const ph = elf.segments.find((p) => p.p_type === PT_DYNAMIC);
  if (ph) { off = ph.p_offset; size = ph.p_filesz; } else {
    const sh = elf.sections.find((s) => s.sh_type === SHT_DYNAMIC);
    if (sh) { off = sh.sh_offset; size = sh.sh_size; }
  }
  if (off === undefined) return [];
  const c = cursorOf(elf);
  const n = Math.floor(size / ELF64_DYN_SIZE);
  const out: Dyn[] = [];
  for (let i = 0; i < n; i++) {
    const o = off + i * ELF64_DYN_SIZE;
    const d_tag = c.i64(o, 'd_tag');
    if (d_tag === DT_NULL) break;
    out.push({ d_tag, d_val: c.u64(o + 8, 'd_val'), fileOffset: o });
  }
  return out;
}

/** Notes of a SHT_NOTE section (4-byte aligned name and descriptor, as on x86-64 Linux). */
export function readNotes(elf: ElfFile, sh: SectionHeader): Note[] {
  if (sh.sh_type !== SHT_NOTE) throw new ElfFormatError(sh.headerOffset + 4, 'not a SHT_NOTE section', sh.sh_type);
  const c = cursorOf(elf);
  const align = sh.sh_addralign === 8 ? 8 : 4;
  const out: Note[] = [];
  let o = sh.sh_offset;
  const end = sh.sh_offset + sh.sh_size;
  while (o + 12 <= end) {
    const namesz = c.u32(o, 'n_namesz');
    const descsz = c.u32(o + 4, 'n_descsz');
    const n_type = c.u32(o + 8, 'n_type');
    const nameOff = o + 12;
    const descOff = nameOff + alignUp(namesz, align);
    const next = descOff + alignUp(descsz, align);
    if (descOff + descsz > end) throw new ElfFormatError(o, 'note past end of section', descsz);
    const nameBytes = elf.bytes.subarray(nameOff, nameOff + namesz);
    const nul = nameBytes.indexOf(0);
    out.push({ n_type, name: Buffer.from(nul >= 0 ? nameBytes.subarray(0, nul) : nameBytes).toString('latin1'), desc: elf.bytes.subarray(descOff, descOff + descsz), descOffset: descOff });
    o = next; // strictly increasing: at least 12 bytes per note, so the loop ends.
  }
  return out;
}

/**
 * The GNU build-id notes of the mapped note sections: the writer replaces these and the verifier
 * checks that these changed, so both must pick them by the same rule.
 */
export function gnuBuildIds(elf: ElfFile): Note[] {
  const ids: Note[] = [];
  for (const s of elf.sections) {
    if (s.sh_type !== SHT_NOTE || !(s.sh_flags & SHF_ALLOC)) continue;
    for (const n of readNotes(elf, s)) if (n.n_type === NT_GNU_BUILD_ID && n.name === 'GNU' && n.desc.length > 0) ids.push(n);
  }
  return ids;
}

export function alignUp(n: number, a: number): number {
  return a <= 1 ? n : Math.ceil(n / a) * a;
}
