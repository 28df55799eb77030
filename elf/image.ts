/**
 * Phase 1 of the randomizer: read the file and decide whether it is eligible.
 *
 * `loadImage` parses the ELF file, checks every precondition the rewriter relies on and refuses
 * with a precise reason otherwise, and gathers the tables later phases need (symbols, static and
 * dynamic relocations, dynamic entries, FDEs). Nothing here changes bytes.
 */
import { ElfRefusal } from './errors';
import { FdeTable, parseEhFrame, parseEhFrameHdr, EhFrameHdr } from './ehframe';
import {
  ElfFile, narrowed, readDynamic, readElf, readRelaRange, readRelaTable, readSymbols, RelaTable, sectionByName, vaddrToOffset,
} from './reader';
import {
  Dyn, DT_FLAGS, DF_TEXTREL, DT_JMPREL, DT_PLTREL, DT_PLTRELSZ, DT_REL, DT_RELA, DT_RELAENT, DT_RELASZ,
  DT_RELR, DT_TEXTREL, ELF64_RELA_SIZE, EM_X86_64, ET_DYN, PT_DYNAMIC, Rela, SectionHeader, SHF_ALLOC,
  SHF_COMPRESSED, SHF_EXECINSTR, SHT_DYNAMIC, SHT_DYNSYM, SHT_NOBITS, SHT_RELA, SHT_REL, SHT_SYMTAB, Symbol,
  isSpecialSectionIndex,
} from './types';

export interface SymbolTable {
  readonly section: SectionHeader;
  readonly symbols: Symbol[];
}

export interface Image {
  readonly elf: ElfFile;
  readonly text: SectionHeader;
  readonly textStart: number;
  readonly textEnd: number;
  /** Executable allocated sections other than .text (.init, .plt, .plt.got, .fini ...): not moved. */
  readonly otherExec: SectionHeader[];
  readonly symtab: SymbolTable;
  readonly dynsym: SymbolTable | undefined;
  /**
   * Static relocations (kept by --emit-relocs) of allocated non-code sections, by index of the
   * section they apply to, as flat arrays like codeRelocs: SQLite has about 6000, and an object
   * (plus its Rela) per entry was the largest per-run collection loadImage made. Resolve an
   * entry's symbol and value with `relocSymbol` and `relocTarget`.
   */
  readonly staticRelocs: Map<number, RelaTable>;
  /**
   * Static relocations of executable sections, by section index, as flat arrays: a large library
   * has tens of thousands, and unit finding needs only where each one sits and its type.
   */
  readonly codeRelocs: Map<number, RelaTable>;
  /** Dynamic relocations (DT_RELA then DT_JMPREL), in file order. */
  readonly dynRelocs: Rela[];
  readonly dynamic: Dyn[];
  readonly ehFrame: SectionHeader | undefined;
  readonly fdes: FdeTable;
  readonly ehFrameHdr: SectionHeader | undefined;
  readonly ehFrameHdrTable: EhFrameHdr | undefined;
}

function concatRelaTables(a: RelaTable, b: RelaTable): RelaTable {
  const f64 = (x: ArrayLike<number>, y: ArrayLike<number>) => { const r = new Float64Array(x.length + y.length); r.set(x); r.set(y, x.length); return r; };
  const u32 = (x: Uint32Array, y: Uint32Array) => { const r = new Uint32Array(x.length + y.length); r.set(x); r.set(y, x.length); return r; };
  // fileOffset is only meaningful for a single table; nothing reads it for static relocations.
  return {
    count: a.count + b.count, fileOffset: a.fileOffset, r_offset: narrowed(f64(a.r_offset, b.r_offset)), r_type: u32(a.r_type, b.r_type),
    r_sym: u32(a.r_sym, b.r_sym), r_addend: f64(a.r_addend, b.r_addend),
  };
}

/** The .symtab symbol of static relocation `q` of `t`, or undefined for symbol index 0. */
export function relocSymbol(img: Image, t: RelaTable, q: number): Symbol | undefined {
  const i = t.r_sym[q];
  return i === 0 ? undefined : img.symtab.symbols[i];
}

/**
 * What static relocation `q` of `t` resolves to: S + A when its symbol is defined here, A alone
 * for symbol index 0, undefined when the symbol is undefined here (external).
 */
export function relocTarget(img: Image, t: RelaTable, q: number): number | undefined {
  const i = t.r_sym[q];
  if (i === 0) return t.r_addend[q];
  const sym = img.symtab.symbols[i];
  return isSpecialSectionIndex(sym.st_shndx) ? undefined : sym.st_value + t.r_addend[q];
}

const NO_FDES: FdeTable = { count: 0, address: new Float64Array(0), pcBegin: new Float64Array(0), pcRange: new Uint32Array(0), fileDelta: 0 };

export function inText(img: Image, addr: number): boolean {
  return addr >= img.textStart && addr < img.textEnd;
}

/**
 * Static relocations (kept by --emit-relocs) of allocated sections, by target section index:
 * code sections' in `codeRelocs`, the others' in `staticRelocs`. Debug sections' are dropped
 * (they are stripped from the output). Refuses a table on another symbol table, an offset
 * outside its section or a symbol index out of range.
 */
function readStaticRelocs(elf: ElfFile, symtabIndex: number, symbolCount: number): { staticRelocs: Map<number, RelaTable>; codeRelocs: Map<number, RelaTable> } {
  const staticRelocs = new Map<number, RelaTable>();
  const codeRelocs = new Map<number, RelaTable>();
  for (const rs of elf.sections) {
    if (rs.sh_type !== SHT_RELA || (rs.sh_flags & SHF_ALLOC)) continue;
    const target = elf.sections[rs.sh_info];
    if (!target || rs.sh_info === 0) continue;
    if (!(target.sh_flags & SHF_ALLOC)) continue; // debug sections: stripped from the output
    if (rs.sh_link !== symtabIndex) throw new ElfRefusal(`${rs.name} does not use .symtab`, rs.headerOffset);
    const t = readRelaTable(elf, rs);
    checkRelocTable(rs, target, t, symbolCount);
    const byTarget = (target.sh_flags & SHF_EXECINSTR) !== 0 ? codeRelocs : staticRelocs;
    const prev = byTarget.get(target.index);
    byTarget.set(target.index, prev ? concatRelaTables(prev, t) : t);
  }
  return { staticRelocs, codeRelocs };
}

/** Every relocation of table `t` (section `rs`) applies inside `target` and names an existing symbol. */
function checkRelocTable(rs: SectionHeader, target: SectionHeader, t: RelaTable, symbolCount: number): void {
  const lo = target.sh_addr;
  const hi = target.sh_addr + Math.max(target.sh_size, 1);
  for (let q = 0; q < t.count; q++) {
    const off = t.r_offset[q];
    if (off < lo || off >= hi) throw new ElfRefusal(`${rs.name}: relocation offset outside ${target.name}`, off);
    if (t.r_sym[q] >= symbolCount) throw new ElfRefusal(`${rs.name}: symbol index ${t.r_sym[q]} out of range`, off);
  }
}

/** Every .eh_frame_hdr entry names an FDE, and none twice (the rebuilt table has one entry per FDE listed). */
function checkEhFrameHdr(fdes: FdeTable, hdr: EhFrameHdr): void {
  const fdeAt = new Set(fdes.address);
  const listed = new Set<number>();
  for (const a of hdr.fdeAddress) {
    if (!fdeAt.has(a)) throw new ElfRefusal('.eh_frame_hdr entry points to no FDE', a);
    // A second entry would be a second search key.
    if (listed.has(a)) throw new ElfRefusal('.eh_frame_hdr lists an FDE twice', a);
    listed.add(a);
  }
}

/** Reads `bytes` and refuses unless every precondition of the rewriter holds. */
export function loadImage(bytes: Uint8Array): Image {
  const elf = readElf(bytes);
  const h = elf.header;
  if (h.e_machine !== EM_X86_64) throw new ElfRefusal(`not x86-64 (e_machine ${h.e_machine})`);
  if (h.e_type !== ET_DYN) throw new ElfRefusal(`not a shared object (e_type ${h.e_type}, want ET_DYN)`);
  if (elf.sections.length === 0) throw new ElfRefusal('no section headers');
  const text = sectionByName(elf, '.text');
  if (!text || text.sh_type === SHT_NOBITS || (text.sh_flags & (SHF_ALLOC | SHF_EXECINSTR)) !== (SHF_ALLOC | SHF_EXECINSTR)) {
    throw new ElfRefusal('no allocated executable .text section');
  }
  if (text.sh_flags & SHF_COMPRESSED) throw new ElfRefusal('.text is compressed');
  if (text.sh_size === 0) throw new ElfRefusal('.text is empty');
  // Code and references are patched by address (through the segments), checked and written by
  // section: both must name the same bytes, for every section the loader maps.
  for (const s of elf.sections) {
    if (!(s.sh_flags & SHF_ALLOC) || s.sh_type === SHT_NOBITS || s.sh_size === 0) continue;
    if (vaddrToOffset(elf, s.sh_addr, s.sh_size) !== s.sh_offset) {
      throw new ElfRefusal(`${s.name || `section ${s.index}`} is not mapped by one PT_LOAD segment at its file offset`, s.sh_addr);
    }
  }
  // Overlapping allocated sections would make "the bytes of .text" ambiguous.
  for (const s of elf.sections) {
    if (s === text || !(s.sh_flags & SHF_ALLOC) || s.sh_size === 0) continue;
    if (s.sh_addr < text.sh_addr + text.sh_size && text.sh_addr < s.sh_addr + s.sh_size) {
      throw new ElfRefusal(`section ${s.name} overlaps .text`, s.sh_addr);
    }
  }

  const textRela = elf.sections.find((s) => s.sh_type === SHT_RELA && s.sh_info === text.index && !(s.sh_flags & SHF_ALLOC));
  if (!textRela) {
    throw new ElfRefusal('no static relocations for .text (no .rela.text: the library was not linked with -Wl,--emit-relocs)');
  }
  if (elf.sections.some((s) => s.sh_type === SHT_REL && !(s.sh_flags & SHF_ALLOC))) {
    throw new ElfRefusal('SHT_REL static relocations (x86-64 uses SHT_RELA)');
  }
  const symtabSec = elf.sections.find((s) => s.sh_type === SHT_SYMTAB);
  if (!symtabSec) throw new ElfRefusal('no .symtab (stripped): function boundaries are unknown');
  const symtab: SymbolTable = { section: symtabSec, symbols: readSymbols(elf, symtabSec) };
  const dynsymSec = elf.sections.find((s) => s.sh_type === SHT_DYNSYM);
  const dynsym = dynsymSec ? { section: dynsymSec, symbols: readSymbols(elf, dynsymSec) } : undefined;

  // The loader finds the dynamic section by PT_DYNAMIC's address; it is read (and patched) here by
  // its file offset: both, and the .dynamic section, must be the same bytes.
  const dynSeg = elf.segments.find((p) => p.p_type === PT_DYNAMIC);
  const dynSec = elf.sections.find((x) => x.sh_type === SHT_DYNAMIC);
  if (dynSeg && (vaddrToOffset(elf, dynSeg.p_vaddr, dynSeg.p_filesz) !== dynSeg.p_offset ||
    (dynSec !== undefined && (dynSec.sh_addr !== dynSeg.p_vaddr || dynSec.sh_offset !== dynSeg.p_offset)))) {
    throw new ElfRefusal('PT_DYNAMIC does not map the .dynamic section at its file offset', dynSeg.p_vaddr);
  }
  const dynamic = readDynamic(elf);
  const dyn = (tag: number) => dynamic.find((d) => d.d_tag === tag)?.d_val;
  if (dyn(DT_TEXTREL) !== undefined || ((dyn(DT_FLAGS) ?? 0) & DF_TEXTREL)) throw new ElfRefusal('library has text relocations (DT_TEXTREL)');
  if (dyn(DT_RELR) !== undefined) throw new ElfRefusal('packed relative relocations (DT_RELR) are not supported');
  if (dyn(DT_REL) !== undefined) throw new ElfRefusal('DT_REL dynamic relocations are not supported on x86-64');
  if (dyn(DT_RELAENT) !== undefined && dyn(DT_RELAENT) !== ELF64_RELA_SIZE) throw new ElfRefusal('bad DT_RELAENT');
  if (dyn(DT_JMPREL) !== undefined && dyn(DT_PLTREL) !== undefined && dyn(DT_PLTREL) !== DT_RELA) throw new ElfRefusal('DT_PLTREL is not DT_RELA');
  const dynRelocs: Rela[] = [];
  const addTable = (addr: number | undefined, size: number | undefined, what: string) => {
    if (addr === undefined || !size) return;
    if (size % ELF64_RELA_SIZE !== 0) throw new ElfRefusal(`${what} size is not a multiple of Elf64_Rela`);
    const off = vaddrToOffset(elf, addr, size);
    if (off === undefined) throw new ElfRefusal(`${what} table is not inside a loaded segment`, addr);
    dynRelocs.push(...readRelaRange(elf, off, size / ELF64_RELA_SIZE));
  };
  addTable(dyn(DT_RELA), dyn(DT_RELASZ), 'DT_RELA');
  // DT_JMPREL usually follows DT_RELA; read it only if it is a separate range.
  const rela = dyn(DT_RELA);
  const relasz = dyn(DT_RELASZ) ?? 0;
  const jmprel = dyn(DT_JMPREL);
  if (jmprel !== undefined && !(rela !== undefined && jmprel >= rela && jmprel < rela + relasz)) addTable(jmprel, dyn(DT_PLTRELSZ), 'DT_JMPREL');
  const execRanges = elf.sections.filter((s) => (s.sh_flags & SHF_EXECINSTR) && (s.sh_flags & SHF_ALLOC));
  for (const r of dynRelocs) {
    const s = execRanges.find((x) => r.r_offset >= x.sh_addr && r.r_offset < x.sh_addr + x.sh_size);
    if (s) throw new ElfRefusal(`dynamic relocation applies to code in ${s.name} (text relocation)`, r.r_offset);
  }

  const { staticRelocs, codeRelocs } = readStaticRelocs(elf, symtabSec.index, symtab.symbols.length);

  const ehFrame = sectionByName(elf, '.eh_frame');
  const fdes = ehFrame && ehFrame.sh_type !== SHT_NOBITS ? parseEhFrame(elf.view, ehFrame.sh_offset, ehFrame.sh_size, ehFrame.sh_addr) : NO_FDES;
  const ehFrameHdr = sectionByName(elf, '.eh_frame_hdr');
  const ehFrameHdrTable = ehFrameHdr ? parseEhFrameHdr(elf.view, ehFrameHdr.sh_offset, ehFrameHdr.sh_size, ehFrameHdr.sh_addr) : undefined;
  if (ehFrameHdrTable) checkEhFrameHdr(fdes, ehFrameHdrTable);

  const otherExec = elf.sections.filter((s) => s !== text && (s.sh_flags & SHF_EXECINSTR) && (s.sh_flags & SHF_ALLOC) && s.sh_type !== SHT_NOBITS && s.sh_size > 0);
  return {
    elf, text, textStart: text.sh_addr, textEnd: text.sh_addr + text.sh_size, otherExec, symtab, dynsym,
    staticRelocs, codeRelocs, dynRelocs, dynamic, ehFrame, fdes, ehFrameHdr, ehFrameHdrTable,
  };
}

