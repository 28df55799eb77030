/**
 * ELF64 types and constants, named as the System V gABI and the x86-64 psABI name them.
 * Only what the reader, the randomizer and the verifier use; every constant keeps its spec name
 * so that a reader of this code can grep the specification for it.
 */

// e_ident
export const ELFMAG = [0x7f, 0x45, 0x4c, 0x46] as const;
export const EI_CLASS = 4;
export const EI_DATA = 5;
export const EI_VERSION = 6;
export const ELFCLASS64 = 2;
export const ELFDATA2LSB = 1;
export const EV_CURRENT = 1;

// e_type
export const ET_REL = 1;
export const ET_EXEC = 2;
export const ET_DYN = 3;
export const ET_CORE = 4;

// e_machine
export const EM_X86_64 = 62;

// special section indexes
export const SHN_UNDEF = 0;
export const SHN_LORESERVE = 0xff00;
export const SHN_ABS = 0xfff1;

/** A symbol's st_shndx that names no section: undefined, or reserved (ABS, COMMON, XINDEX ...). */
export function isSpecialSectionIndex(n: number): boolean {
  return n === SHN_UNDEF || n >= SHN_LORESERVE;
}
export const SHN_COMMON = 0xfff2;
export const SHN_XINDEX = 0xffff;

// sh_type
export const SHT_NULL = 0;
export const SHT_PROGBITS = 1;
export const SHT_SYMTAB = 2;
export const SHT_STRTAB = 3;
export const SHT_RELA = 4;
export const SHT_HASH = 5;
export const SHT_DYNAMIC = 6;
export const SHT_NOTE = 7;
export const SHT_NOBITS = 8;
export const SHT_REL = 9;
export const SHT_DYNSYM = 11;
export const SHT_INIT_ARRAY = 14;
export const SHT_FINI_ARRAY = 15;
export const SHT_PREINIT_ARRAY = 16;
export const SHT_GROUP = 17;
export const SHT_SYMTAB_SHNDX = 18;
export const SHT_RELR = 19;
export const SHT_GNU_HASH = 0x6ffffff6;
export const SHT_GNU_VERDEF = 0x6ffffffd;
export const SHT_GNU_VERNEED = 0x6ffffffe;
export const SHT_GNU_VERSYM = 0x6fffffff;

// sh_flags
export const SHF_WRITE = 0x1;
export const SHF_ALLOC = 0x2;
export const SHF_EXECINSTR = 0x4;
export const SHF_INFO_LINK = 0x40;
export const SHF_TLS = 0x400;
export const SHF_COMPRESSED = 0x800;

// p_type
export const PT_NULL = 0;
export const PT_LOAD = 1;
export const PT_DYNAMIC = 2;
export const PT_INTERP = 3;
export const PT_NOTE = 4;
export const PT_TLS = 7;
export const PT_GNU_EH_FRAME = 0x6474e550;
export const PT_GNU_STACK = 0x6474e551;
export const PT_GNU_RELRO = 0x6474e552;
export const PT_GNU_PROPERTY = 0x6474e553;

// p_flags
export const PF_X = 0x1;
export const PF_W = 0x2;
export const PF_R = 0x4;

// symbol binding and type (st_info)
export const STB_LOCAL = 0;
export const STB_GLOBAL = 1;
export const STB_WEAK = 2;
export const STT_NOTYPE = 0;
export const STT_OBJECT = 1;
export const STT_FUNC = 2;
export const STT_SECTION = 3;
export const STT_FILE = 4;
export const STT_TLS = 6;
export const STT_GNU_IFUNC = 10;

// d_tag
export const DT_NULL = 0;
export const DT_NEEDED = 1;
export const DT_PLTRELSZ = 2;
export const DT_PLTGOT = 3;
export const DT_HASH = 4;
export const DT_STRTAB = 5;
export const DT_SYMTAB = 6;
export const DT_RELA = 7;
export const DT_RELASZ = 8;
export const DT_RELAENT = 9;
export const DT_STRSZ = 10;
export const DT_SYMENT = 11;
export const DT_INIT = 12;
export const DT_FINI = 13;
export const DT_SONAME = 14;
export const DT_REL = 17;
export const DT_RELSZ = 18;
export const DT_PLTREL = 20;
export const DT_TEXTREL = 22;
export const DT_JMPREL = 23;
export const DT_INIT_ARRAY = 25;
export const DT_FINI_ARRAY = 26;
export const DT_INIT_ARRAYSZ = 27;
export const DT_FINI_ARRAYSZ = 28;
export const DT_FLAGS = 30;
export const DT_PREINIT_ARRAY = 32;
export const DT_RELRSZ = 35;
export const DT_RELR = 36;
export const DT_RELRENT = 37;
export const DT_GNU_HASH = 0x6ffffef5;
export const DT_RELACOUNT = 0x6ffffff9;
export const DT_FLAGS_1 = 0x6ffffffb;

// DT_FLAGS bits
export const DF_TEXTREL = 0x4;

// note types
export const NT_GNU_BUILD_ID = 3;
export const NT_GNU_PROPERTY_TYPE_0 = 5;

// x86-64 relocation types (psABI table 4.9)
export const R_X86_64_NONE = 0;
export const R_X86_64_64 = 1;
export const R_X86_64_PC32 = 2;
export const R_X86_64_GOT32 = 3;
export const R_X86_64_PLT32 = 4;
export const R_X86_64_COPY = 5;
export const R_X86_64_GLOB_DAT = 6;
export const R_X86_64_JUMP_SLOT = 7;
export const R_X86_64_RELATIVE = 8;
export const R_X86_64_GOTPCREL = 9;
export const R_X86_64_32 = 10;
export const R_X86_64_32S = 11;
export const R_X86_64_16 = 12;
export const R_X86_64_PC16 = 13;
export const R_X86_64_8 = 14;
export const R_X86_64_PC8 = 15;
export const R_X86_64_DTPMOD64 = 16;
export const R_X86_64_DTPOFF64 = 17;
export const R_X86_64_TPOFF64 = 18;
export const R_X86_64_TLSGD = 19;
export const R_X86_64_TLSLD = 20;
export const R_X86_64_DTPOFF32 = 21;
export const R_X86_64_GOTTPOFF = 22;
export const R_X86_64_TPOFF32 = 23;
export const R_X86_64_PC64 = 24;
export const R_X86_64_GOTOFF64 = 25;
export const R_X86_64_GOTPC32 = 26;
export const R_X86_64_GOT64 = 27;
export const R_X86_64_GOTPCREL64 = 28;
export const R_X86_64_GOTPC64 = 29;
export const R_X86_64_GOTPLT64 = 30;
export const R_X86_64_PLTOFF64 = 31;
export const R_X86_64_SIZE32 = 32;
export const R_X86_64_SIZE64 = 33;
export const R_X86_64_GOTPC32_TLSDESC = 34;
export const R_X86_64_TLSDESC_CALL = 35;
export const R_X86_64_TLSDESC = 36;
export const R_X86_64_IRELATIVE = 37;
export const R_X86_64_RELATIVE64 = 38;
export const R_X86_64_GOTPCRELX = 41;
export const R_X86_64_REX_GOTPCRELX = 42;

const R_X86_64_NAMES: Record<number, string> = {
  0: 'R_X86_64_NONE', 1: 'R_X86_64_64', 2: 'R_X86_64_PC32', 3: 'R_X86_64_GOT32', 4: 'R_X86_64_PLT32',
  5: 'R_X86_64_COPY', 6: 'R_X86_64_GLOB_DAT', 7: 'R_X86_64_JUMP_SLOT', 8: 'R_X86_64_RELATIVE',
  9: 'R_X86_64_GOTPCREL', 10: 'R_X86_64_32', 11: 'R_X86_64_32S', 12: 'R_X86_64_16', 13: 'R_X86_64_PC16',
  14: 'R_X86_64_8', 15: 'R_X86_64_PC8', 16: 'R_X86_64_DTPMOD64', 17: 'R_X86_64_DTPOFF64',
  18: 'R_X86_64_TPOFF64', 19: 'R_X86_64_TLSGD', 20: 'R_X86_64_TLSLD', 21: 'R_X86_64_DTPOFF32',
  22: 'R_X86_64_GOTTPOFF', 23: 'R_X86_64_TPOFF32', 24: 'R_X86_64_PC64', 25: 'R_X86_64_GOTOFF64',
  26: 'R_X86_64_GOTPC32', 27: 'R_X86_64_GOT64', 28: 'R_X86_64_GOTPCREL64', 29: 'R_X86_64_GOTPC64',
  30: 'R_X86_64_GOTPLT64', 31: 'R_X86_64_PLTOFF64', 32: 'R_X86_64_SIZE32', 33: 'R_X86_64_SIZE64',
  34: 'R_X86_64_GOTPC32_TLSDESC', 35: 'R_X86_64_TLSDESC_CALL', 36: 'R_X86_64_TLSDESC',
  37: 'R_X86_64_IRELATIVE', 38: 'R_X86_64_RELATIVE64', 41: 'R_X86_64_GOTPCRELX', 42: 'R_X86_64_REX_GOTPCRELX',
};

/** Spec name of an x86-64 relocation type, like Go's R_X86_64.String(). */
export function relocTypeName(t: number): string {
  return R_X86_64_NAMES[t] ?? `R_X86_64_unknown(${t})`;
}

export const ELF64_EHDR_SIZE = 64;
export const ELF64_SHDR_SIZE = 64;
export const ELF64_PHDR_SIZE = 56;
export const ELF64_SYM_SIZE = 24;
export const ELF64_RELA_SIZE = 24;
export const ELF64_DYN_SIZE = 16;

/** Elf64_Ehdr, fields as the gABI names them. */
export interface FileHeader {
  readonly e_type: number;
  readonly e_machine: number;
  readonly e_version: number;
  readonly e_entry: number;
  readonly e_phoff: number;
  readonly e_shoff: number;
  readonly e_flags: number;
  readonly e_ehsize: number;
  readonly e_phentsize: number;
  readonly e_phnum: number;
  readonly e_shentsize: number;
  /** Real section count (SHN_XINDEX extension resolved). */
  readonly e_shnum: number;
  /** Real string table index (SHN_XINDEX extension resolved). */
  readonly e_shstrndx: number;
}

/** Elf64_Shdr plus its index, resolved name and the file offset of the header itself. */
export interface SectionHeader {
  readonly index: number;
  readonly name: string;
  readonly sh_name: number;
  readonly sh_type: number;
  readonly sh_flags: number;
  readonly sh_addr: number;
  readonly sh_offset: number;
  readonly sh_size: number;
  readonly sh_link: number;
  readonly sh_info: number;
  readonly sh_addralign: number;
  readonly sh_entsize: number;
  /** Offset of this header in the file (for errors and for the writer). */
  readonly headerOffset: number;
}

/** Elf64_Phdr plus its index. */
export interface ProgramHeader {
  readonly index: number;
  readonly p_type: number;
  readonly p_flags: number;
  readonly p_offset: number;
  readonly p_vaddr: number;
  readonly p_paddr: number;
  readonly p_filesz: number;
  readonly p_memsz: number;
  readonly p_align: number;
  readonly headerOffset: number;
}

/** Elf64_Sym with its resolved name; `fileOffset` is where the entry lives (the writer patches st_value there). */
export interface Symbol {
  readonly index: number;
  readonly name: string;
  readonly st_name: number;
  readonly st_info: number;
  readonly st_other: number;
  readonly st_shndx: number;
  readonly st_value: number;
  readonly st_size: number;
  readonly bind: number;
  readonly type: number;
  readonly fileOffset: number;
}

/** Elf64_Rela; r_sym and r_type split out of r_info. */
export interface Rela {
  readonly r_offset: number;
  readonly r_sym: number;
  readonly r_type: number;
  readonly r_addend: number;
  readonly fileOffset: number;
}

/** Elf64_Dyn. */
export interface Dyn {
  readonly d_tag: number;
  readonly d_val: number;
  readonly fileOffset: number;
}

/** One note (Elf64_Nhdr + name + descriptor). */
export interface Note {
  readonly n_type: number;
  readonly name: string;
  readonly desc: Uint8Array;
  /** File offset of the descriptor (the writer rewrites a build-id there). */
  readonly descOffset: number;
}
