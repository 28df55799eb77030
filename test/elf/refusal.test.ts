/**
 * Refuse, don't guess: this machine's own libraries carry no static relocations and must be
 * refused with the reason, never mangled, and never leave an output file behind. Crafted
 * variants exercise each eligibility reason.
 */
import * as fs from 'fs';
import * as path from 'path';
import { ElfFormatError, ElfRefusal, inspectBytes, prepareLibrary, randomizeBytes, randomizeFile } from '../../elf';
import { readElf, readSymbols } from '../../elf/reader';
import { announceSkip, buildZlib, tempDir } from './libs';

const LIBDIR = '/usr/lib/x86_64-linux-gnu';

function hostLibraries(max: number): string[] {
  const names = fs.readdirSync(LIBDIR).filter((n) => /\.so(\.\d+)*$/.test(n)).sort();
  const out: string[] = [];
  for (const n of names) {
    const p = path.join(LIBDIR, n);
    try {
      const st = fs.statSync(p);
      if (!st.isFile() || st.size > 8 << 20) continue;
      const fd = fs.openSync(p, 'r');
      const magic = Buffer.alloc(4);
      fs.readSync(fd, magic, 0, 4, 0);
      fs.closeSync(fd);
      if (magic.toString('latin1') === '\x7fELF') out.push(p);
    } catch { /* unreadable: not a candidate */ }
    if (out.length >= max) break;
  }
  return out;
}

describe('refusals', () => {
  test('host libz.so.1 is refused because it has no static relocations', () => {
    const rep = inspectBytes(fs.readFileSync(`${LIBDIR}/libz.so.1`));
    expect(rep.randomizable).toBe(false);
    expect(rep.reason).toMatch(/no static relocations.*--emit-relocs/);
  });

  test('60 host libraries are all refused with a reason, and no output file is left behind', () => {
    const dir = tempDir('refuse');
    const libs = hostLibraries(60);
    expect(libs.length).toBeGreaterThan(20);
    const reasons = new Map<string, number>();
    for (const lib of libs) {
      const out = path.join(dir, path.basename(lib));
      let err: unknown;
      try {
        randomizeFile(lib, out);
      } catch (e) {
        err = e;
      }
      expect(err instanceof ElfRefusal || err instanceof ElfFormatError).toBe(true);
      const reason = (err as Error).message.replace(/ at 0x[0-9a-f]+$/, '');
      reasons.set(reason, (reasons.get(reason) ?? 0) + 1);
    }
    expect(fs.readdirSync(dir)).toEqual([]);
    // eslint-disable-next-line no-console
    console.log([...reasons].map(([r, n]) => `${n} × ${r}`).join('\n'));
  });

  test('not an ELF file, a 32-bit ELF, a truncated header: format errors with the offset', () => {
    expect(() => randomizeBytes(Buffer.from('#!/bin/sh\necho hi\n'))).toThrow(/bad magic number in record at byte 0x0/);
    const h = Buffer.alloc(64);
    h.write('\x7fELF', 0, 'latin1');
    h[4] = 1;
    expect(() => randomizeBytes(h)).toThrow(/not ELFCLASS64 '0x1' in record at byte 0x4/);
    expect(() => randomizeBytes(h.subarray(0, 30))).toThrow(ElfFormatError);
  });

  const z = buildZlib();
  if (!z.ok) announceSkip('crafted refusals from zlib', z.skip);
  (z.ok ? describe : describe.skip)('crafted from a randomizable library', () => {
    if (!z.ok) return;
    const orig = fs.readFileSync(z.lib);
    const sections = () => {
      const shoff = Number(orig.readBigUInt64LE(40));
      const n = orig.readUInt16LE(60);
      const strndx = orig.readUInt16LE(62);
      const strOff = Number(orig.readBigUInt64LE(shoff + strndx * 64 + 24));
      return Array.from({ length: n }, (_, i) => {
        const o = shoff + i * 64;
        const nameOff = strOff + orig.readUInt32LE(o);
        return { i, o, name: orig.toString('latin1', nameOff, orig.indexOf(0, nameOff)), type: orig.readUInt32LE(o + 4), offset: Number(orig.readBigUInt64LE(o + 24)), size: Number(orig.readBigUInt64LE(o + 32)) };
      });
    };
    const refused = (b: Buffer, re: RegExp) => {
      let err: unknown;
      try { randomizeBytes(b, Buffer.from('01', 'hex')); } catch (e) { err = e; }
      expect(err).toBeInstanceOf(ElfRefusal);
      expect((err as Error).message).toMatch(re);
    };

    test('not x86-64', () => {
      const b = Buffer.from(orig);
      b.writeUInt16LE(183, 18); // EM_AARCH64
      refused(b, /not x86-64 \(e_machine 183\)/);
    });
    test('not a shared object', () => {
      const b = Buffer.from(orig);
      b.writeUInt16LE(2, 16); // ET_EXEC
      refused(b, /not a shared object/);
    });
    test('no .rela.text', () => {
      const b = Buffer.from(orig);
      const s = sections().find((x) => x.name === '.rela.text')!;
      b.writeUInt32LE(0, s.o + 4); // SHT_NULL
      refused(b, /no static relocations for \.text/);
    });
    test('unsupported relocation type at its offset', () => {
      const b = Buffer.from(orig);
      const s = sections().find((x) => x.name === '.rela.text')!;
      const off = Number(b.readBigUInt64LE(s.offset));
      b.writeUInt32LE(10, s.offset + 8); // first relocation becomes R_X86_64_32
      refused(b, new RegExp(`R_X86_64_32 .* at 0x${off.toString(16)}`));
    });
    test('a relocation that sits on no operand is an unresolvable reference', () => {
      const b = Buffer.from(orig);
      const s = sections().find((x) => x.name === '.rela.text')!;
      const off = Number(b.readBigUInt64LE(s.offset));
      b.writeBigUInt64LE(BigInt(off + 1), s.offset);
      // The moved relocation sits on no operand, and the operand it left is now unrelocated.
      refused(b, /does not match a PC-relative operand \(unresolvable reference\)|unrelocated PC-relative reference/);
    });
    test('undecodable bytes in another code section (.plt), whatever the seed', () => {
      const b = Buffer.from(orig);
      const s = sections().find((x) => x.name === '.plt')!;
      b.fill(0xff, s.offset + 0xc, s.offset + 0x10); // the 4-byte nop after PLT0 becomes ff ff ff ff: no instruction
      refused(b, /bytes in \.plt that do not decode as instructions/);
    });
    test('a mapped section whose file offset its segment does not map', () => {
      const b = Buffer.from(orig);
      const s = sections().find((x) => x.name === '.rodata')!;
      b.writeBigUInt64LE(BigInt(s.offset + 8), s.o + 24); // sh_offset moved; the segment still maps the old bytes
      refused(b, /\.rodata is not mapped by one PT_LOAD segment at its file offset/);
    });
    test('a data relocation that reaches .text through a symbol of another section', () => {
      const b = Buffer.from(orig);
      const elf = readElf(b);
      const text = elf.sections.find((x) => x.name === '.text')!;
      const rodata = elf.sections.find((x) => x.name === '.rodata')!;
      const symtab = elf.sections.find((x) => x.name === '.symtab')!;
      const sec = readSymbols(elf, symtab).find((y) => y.type === 3 /* STT_SECTION */ && y.st_shndx === text.index)!;
      b.writeUInt16LE(rodata.index, sec.fileOffset + 6); // its value still lies in .text
      refused(b, /relocation in \S+ reaches \.text through a symbol of another section/);
    });
    test('PT_DYNAMIC that does not map the .dynamic section', () => {
      const b = Buffer.from(orig);
      const phoff = Number(b.readBigUInt64LE(32));
      const n = b.readUInt16LE(56);
      const i = Array.from({ length: n }, (_, k) => k).find((k) => b.readUInt32LE(phoff + k * 56) === 2 /* PT_DYNAMIC */)!;
      b.writeBigUInt64LE(b.readBigUInt64LE(phoff + i * 56 + 8) + 16n, phoff + i * 56 + 8); // p_offset
      refused(b, /PT_DYNAMIC does not map the \.dynamic section at its file offset/);
    });
    test('an .eh_frame_hdr that lists an FDE twice', () => {
      const b = Buffer.from(orig);
      const s = sections().find((x) => x.name === '.eh_frame_hdr')!;
      b.copy(b, s.offset + 12 + 8, s.offset + 12, s.offset + 12 + 8); // entry 1 := entry 0
      refused(b, /^\.eh_frame_hdr lists an FDE twice/); // from the reader, not the verifier
    });
    test('a type-3 note not named GNU is no build-id: left as it is, and the library randomizes', () => {
      const b = Buffer.from(orig);
      const s = sections().find((x) => x.name === '.note.gnu.build-id')!;
      expect(b.toString('latin1', s.offset + 12, s.offset + 15)).toBe('GNU');
      b.write('GNV', s.offset + 12, 'latin1'); // the writer and the verifier once disagreed on this
      const out = randomizeBytes(b, Buffer.from('01', 'hex')).bytes;
      expect(Buffer.from(out.subarray(s.offset, s.offset + s.size)).equals(b.subarray(s.offset, s.offset + s.size))).toBe(true);
    });
    test('a symbol size that ends inside its last instruction does not cut the instruction', () => {
      // A sized function whose last instruction is longer than a byte and ends where the next
      // function starts: one byte off its size puts the end inside that instruction.
      const { img, plan } = prepareLibrary(orig);
      const d = plan.code;
      const atomEnds = new Set(plan.units.flatMap((u) => u.atoms.map((a) => a.end)));
      const victim = img.symtab.symbols.find((x) => {
        if (x.st_size < 2 || !atomEnds.has(x.st_value + x.st_size)) return false;
        const u = plan.units.find((v) => v.start <= x.st_value && x.st_value < v.end);
        const a = u?.atoms.find((t) => t.start === x.st_value);
        return a !== undefined && a.end === x.st_value + x.st_size && d.len[a.last - 1] > 1;
      })!;
      expect(victim).toBeDefined();
      const b = Buffer.from(orig);
      // Every symbol at that address (.symtab and .dynsym), so that no alias keeps the full size.
      const elf = readElf(b);
      for (const t of elf.sections.filter((x) => x.name === '.symtab' || x.name === '.dynsym')) {
        for (const y of readSymbols(elf, t)) if (y.st_value === victim.st_value && y.st_size > 0) b.writeBigUInt64LE(BigInt(y.st_size - 1), y.fileOffset + 16);
      }
      expect(() => randomizeBytes(b, Buffer.from('01', 'hex'))).not.toThrow();
    });
    test('stripped .symtab', () => {
      const b = Buffer.from(orig);
      const s = sections().find((x) => x.name === '.symtab')!;
      b.writeUInt32LE(1, s.o + 4); // SHT_PROGBITS
      expect(() => randomizeBytes(b)).toThrow(ElfRefusal);
    });
  });
});
