/**
 * The typed reader agrees with binutils' readelf on a real library, and names things as the
 * specification does.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import { readDynamic, readElf, readNotes, readRelas, readSymbols } from '../../elf';
import { relocTypeName, SHT_NOTE, SHT_RELA, SHT_SYMTAB, NT_GNU_BUILD_ID } from '../../elf/types';
import { announceSkip, buildZlib } from './libs';

const z = buildZlib();
if (!z.ok) announceSkip('reader tests', z.skip);

(z.ok ? describe : describe.skip)('ELF64 reader', () => {
  if (!z.ok) return;
  const elf = readElf(fs.readFileSync(z.lib));

  test('sections match readelf -S', () => {
    const out = execFileSync('readelf', ['-SW', z.lib]).toString();
    const rows = [...out.matchAll(/^\s*\[\s*(\d+)\]\s+(\S+)\s+\S+\s+([0-9a-f]{16})\s+([0-9a-f]+)\s+([0-9a-f]+)/gm)];
    expect(rows.length).toBe(elf.sections.length - 1);
    for (const r of rows) {
      const s = elf.sections[Number(r[1])];
      expect(s.name).toBe(r[2]);
      expect(s.sh_addr).toBe(parseInt(r[3], 16));
      expect(s.sh_offset).toBe(parseInt(r[4], 16));
      expect(s.sh_size).toBe(parseInt(r[5], 16));
    }
  });

  test('relocations and symbols match readelf -r / -s', () => {
    const out = execFileSync('readelf', ['-rW', z.lib]).toString();
    for (const s of elf.sections.filter((x) => x.sh_type === SHT_RELA)) {
      const m = new RegExp(`Relocation section '${s.name.replace(/\./g, '\\.')}' at offset 0x[0-9a-f]+ contains (\\d+) entr`).exec(out);
      expect(m).not.toBeNull();
      expect(readRelas(elf, s).length).toBe(Number(m![1]));
    }
    const rt = readRelas(elf, elf.sections.find((x) => x.name === '.rela.text')!);
    expect(new Set(rt.map((r) => relocTypeName(r.r_type)))).toContain('R_X86_64_PLT32');
    const symtab = readSymbols(elf, elf.sections.find((x) => x.sh_type === SHT_SYMTAB)!);
    const syms = execFileSync('readelf', ['-sW', z.lib]).toString();
    const m = /Symbol table '\.symtab' contains (\d+) entries/.exec(syms);
    expect(symtab.length).toBe(Number(m![1]));
    expect(symtab.find((s) => s.name === 'inflate')?.st_size).toBeGreaterThan(0);
  });

  test('dynamic section and build-id note', () => {
    const dyn = readDynamic(elf);
    expect(dyn.length).toBeGreaterThan(10);
    const notes = elf.sections.filter((s) => s.sh_type === SHT_NOTE).flatMap((s) => readNotes(elf, s));
    const id = notes.find((n) => n.n_type === NT_GNU_BUILD_ID);
    expect(id?.name).toBe('GNU');
    const re = /Build ID: ([0-9a-f]+)/.exec(execFileSync('readelf', ['-n', z.lib]).toString());
    expect(Buffer.from(id!.desc).toString('hex')).toBe(re![1]);
  });
});
