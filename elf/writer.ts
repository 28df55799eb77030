/**
 * Phase 7: rebuild the file around the patched loadable part.
 *
 * The loadable part (everything segments map) keeps its bytes and offsets. Non-allocated
 * sections are re-emitted after it, except:
 *  - DWARF debug sections (.debug_*, .zdebug_*) and .gnu_debuglink/.gnu_debugaltlink: they describe
 *    the old layout. We strip them rather than half-update them; names in backtraces and gdb
 *    still come from .symtab/.dynsym and .eh_frame, which are updated.
 *  - static relocation sections (--emit-relocs): stale after moving code, and a stale
 *    .rela.text would invite a second, wrong randomization of the output.
 * Section indexes are renumbered (sh_link, SHF_INFO_LINK sh_info, st_shndx of both symbol tables).
 * The GNU build-id is replaced by a hash of the output so that no debugger or debuginfod pairs
 * the image with the original's debug file.
 */
import { createHash } from 'crypto';
import { ElfRefusal } from './errors';
import { alignUp, gnuBuildIds, readSymbols, ElfFile } from './reader';
import {
  ELF64_SHDR_SIZE, ELF64_SYM_SIZE, SectionHeader, SHF_ALLOC, SHF_INFO_LINK, SHN_ABS,
  SHN_LORESERVE, SHT_DYNSYM, isSpecialSectionIndex, SHT_NOBITS, SHT_REL, SHT_RELA, SHT_SYMTAB, Symbol,
} from './types';

export interface WriteReport {
  readonly droppedSections: string[];
  readonly buildIdReplaced: boolean;
}

function dropped(s: SectionHeader): boolean {
  if (s.index === 0 || (s.sh_flags & SHF_ALLOC)) return false;
  if (s.sh_type === SHT_RELA || s.sh_type === SHT_REL) return true;
  return s.name.startsWith('.debug_') || s.name.startsWith('.zdebug_') || s.name === '.gnu_debuglink' || s.name === '.gnu_debugaltlink';
}

/** End of the loadable part: segments, allocated sections and the headers. */
function loadableEnd(elf: ElfFile): number {
  let end = elf.header.e_phoff + elf.header.e_phnum * 56;
  for (const p of elf.segments) end = Math.max(end, p.p_offset + p.p_filesz);
  for (const s of elf.sections) if ((s.sh_flags & SHF_ALLOC) && s.sh_type !== SHT_NOBITS) end = Math.max(end, s.sh_offset + s.sh_size);
  return end;
}

/**
 * The byte ranges of the input that the rebuilt file is made of (the loadable part, the kept
 * non-allocated sections, the section headers). The randomizer copies only these: the stripped
 * debug sections are often most of the file.
 */
export function keptRanges(elf: ElfFile): [number, number][] {
  const r: [number, number][] = [[0, loadableEnd(elf)]];
  for (const s of elf.sections) {
    if (s.index === 0 || (s.sh_flags & SHF_ALLOC) || dropped(s) || s.sh_type === SHT_NOBITS) continue;
    r.push([s.sh_offset, s.sh_offset + s.sh_size]);
  }
  if (elf.header.e_shnum > 0) r.push([elf.header.e_shoff, elf.header.e_shoff + elf.header.e_shnum * ELF64_SHDR_SIZE]);
  return r;
}

/**
 * `patched` has the input's size and layout (at least over keptRanges); `elf` is the parsed input.
 * `symbols` may give the symbols already read from a symbol table section of `elf` (read here
 * otherwise): only their section indexes are used.
 */
export function rebuildFile(
  elf: ElfFile, patched: Uint8Array, symbols: (s: SectionHeader) => Symbol[] | undefined = () => undefined,
): { bytes: Uint8Array; report: WriteReport } {
  const keep = elf.sections.filter((s) => !dropped(s));
  if (keep.length >= SHN_LORESERVE) throw new ElfRefusal('too many sections to renumber');
  const newIndex = new Int32Array(elf.sections.length).fill(-1);
  keep.forEach((s, i) => { newIndex[s.index] = i; });

  const allocEnd = loadableEnd(elf);

  // Place kept non-allocated sections after it.
  const newOffset = new Map<number, number>();
  let cur = allocEnd;
  for (const s of keep) {
    if (s.index === 0 || (s.sh_flags & SHF_ALLOC)) continue;
    if (s.sh_type === SHT_NOBITS) { newOffset.set(s.index, cur); continue; }
    cur = alignUp(cur, Math.max(1, Math.min(s.sh_addralign, 4096)));
    newOffset.set(s.index, cur);
    cur += s.sh_size;
  }
  const shoff = alignUp(cur, 8);
  const total = shoff + keep.length * ELF64_SHDR_SIZE;
  const out = new Uint8Array(total);
  out.set(patched.subarray(0, allocEnd), 0);
  for (const s of keep) {
    const o = newOffset.get(s.index);
    if (o === undefined || s.sh_type === SHT_NOBITS) continue;
    out.set(patched.subarray(s.sh_offset, s.sh_offset + s.sh_size), o);
  }
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);

  // Section headers.
  keep.forEach((s, i) => {
    const h = shoff + i * ELF64_SHDR_SIZE;
    out.set(patched.subarray(s.headerOffset, s.headerOffset + ELF64_SHDR_SIZE), h);
    if (i === 0) return;
    const o = newOffset.get(s.index);
    if (o !== undefined) view.setBigUint64(h + 24, BigInt(o), true);
    view.setUint32(h + 40, s.sh_link ? Math.max(0, newIndex[s.sh_link]) : 0, true);
    if ((s.sh_flags & SHF_INFO_LINK) || s.sh_type === SHT_RELA || s.sh_type === SHT_REL) {
      view.setUint32(h + 44, s.sh_info ? Math.max(0, newIndex[s.sh_info]) : 0, true);
    }
  });
  view.setBigUint64(40, BigInt(shoff), true);
  view.setUint16(60, keep.length, true);
  view.setUint16(62, newIndex[elf.header.e_shstrndx], true);
  if (elf.header.e_shnum >= SHN_LORESERVE || elf.header.e_shstrndx >= SHN_LORESERVE) {
    throw new ElfRefusal('extended section numbering is not supported by the writer');
  }

  // st_shndx of both symbol tables follow the renumbering.
  for (const s of keep) {
    if (s.sh_type !== SHT_SYMTAB && s.sh_type !== SHT_DYNSYM) continue;
    renumberSymbols(view, (s.sh_flags & SHF_ALLOC) ? s.sh_offset : newOffset.get(s.index)!, symbols(s) ?? readSymbols(elf, s), newIndex);
  }

  // Build-id: a hash of the output with the id zeroed (deterministic, and never the original's).
  let buildIdReplaced = false;
  const ids = gnuBuildIds(elf).map((n) => ({ off: n.descOffset, len: n.desc.length }));
  for (const id of ids) out.fill(0, id.off, id.off + id.len);
  if (ids.length) {
    const h = createHash('sha256').update(Buffer.from('fscache-randomized')).update(out).digest();
    for (const id of ids) for (let i = 0; i < id.len; i++) out[id.off + i] = h[i % h.length];
    buildIdReplaced = true;
  }
  return { bytes: out, report: { droppedSections: elf.sections.filter(dropped).map((s) => s.name), buildIdReplaced } };
}

/**
 * Writes the new section index of each symbol of the table at file offset `base` (its own loop:
 * see findUnits on why hot loops get functions of their own).
 */
function renumberSymbols(view: DataView, base: number, syms: Symbol[], newIndex: Int32Array): void {
  for (const sym of syms) {
    if (isSpecialSectionIndex(sym.st_shndx)) continue;
    const ni = newIndex[sym.st_shndx];
    // A symbol of a stripped section (debug section symbols) keeps no meaning there: make it absolute.
    view.setUint16(base + sym.index * ELF64_SYM_SIZE + 6, ni >= 0 ? ni : SHN_ABS, true);
  }
}
