/**
 * The verifier is independent of the patcher: tampering with a correct output in any of the
 * places a reference lives must make it fail, with the address.
 */
import * as fs from 'fs';
import { VerifyError } from '../../elf';
import { loadImage } from '../../elf/image';
import { planLayout, ShuffleRng, mapAddress } from '../../elf/layout';
import { moveCodeAndPatch } from '../../elf/patch';
import { readElf, readSymbols, sectionByName } from '../../elf/reader';
import { findUnits } from '../../elf/units';
import { verifyImage } from '../../elf/verify';
import { rebuildFile } from '../../elf/writer';
import { REF_BRANCH } from '../../elf/disasm';
import { announceSkip, buildZlib } from './libs';

const z = buildZlib();
if (!z.ok) announceSkip('verifier tests', z.skip);

(z.ok ? describe : describe.skip)('verifier catches broken images', () => {
  if (!z.ok) return;
  const input = fs.readFileSync(z.lib);
  const img = loadImage(input);
  const plan = findUnits(img);
  const layout = planLayout(plan, img.textStart, img.textEnd, new ShuffleRng(Buffer.from('77', 'hex'), input));
  const patched = Uint8Array.from(input);
  moveCodeAndPatch(img, layout, patched);
  const good = rebuildFile(img.elf, patched).bytes;
  const textOff = img.text.sh_offset;

  test('the untampered image verifies', () => {
    expect(() => verifyImage(img, layout, good)).not.toThrow();
  });

  test('a call displacement off by one', () => {
    // First cross-unit call in the input, found from the decoded units.
    const d = plan.code;
    const isCall = (r: number) => d.refKind[r] === REF_BRANCH && d.len[d.refs[r]] === 5;
    const u = plan.units.find((x) => { for (let r = 0; r < d.refs.length; r++) if (d.refs[r] >= x.first && d.refs[r] < x.coreLast && isCall(r)) return true; return false; })!;
    let r = 0;
    while (!(d.refs[r] >= u.first && isCall(r))) r++;
    const field = mapAddress(layout, d.ip[d.refs[r]]) + d.fieldOff[r];
    const bad = Uint8Array.from(good);
    bad[textOff + field - img.textStart] ^= 1;
    expect(() => verifyImage(img, layout, bad)).toThrow(VerifyError);
  });

  test('a symbol left at its old address', () => {
    const out = readElf(good);
    const dynsym = out.sections.find((s) => s.name === '.dynsym')!;
    const sym = readSymbols(out, dynsym).find((s) => s.name === 'inflate')!;
    const bad = Uint8Array.from(good);
    const orig = readSymbols(img.elf, img.dynsym!.section).find((s) => s.name === 'inflate')!;
    new DataView(bad.buffer).setBigUint64(sym.fileOffset + 8, BigInt(orig.st_value), true);
    if (orig.st_value !== sym.st_value) expect(() => verifyImage(img, layout, bad)).toThrow(/symbol inflate does not point to its moved body/);
  });

  test('a jump-table entry not updated', () => {
    const rodata = sectionByName(img.elf, '.rodata')!;
    const relocs = img.staticRelocs.get(rodata.index)!;
    const bad = Uint8Array.from(good);
    const view = new DataView(bad.buffer);
    // Put back the input value of every entry: at least one of them moved.
    for (let q = 0; q < relocs.count; q++) {
      const o = rodata.sh_offset + (relocs.r_offset[q] - rodata.sh_addr);
      view.setInt32(o, input.readInt32LE(o), true);
    }
    expect(() => verifyImage(img, layout, bad)).toThrow(/PC-relative data word does not reach the moved target/);
  });

  test('an unsorted .eh_frame_hdr table', () => {
    const hdr = img.ehFrameHdrTable!;
    const bad = Uint8Array.from(good);
    const a = hdr.tableFileOffset;
    const first = Buffer.from(bad.subarray(a, a + 8));
    bad.set(bad.subarray(a + 8, a + 16), a);
    bad.set(first, a + 8);
    expect(() => verifyImage(img, layout, bad)).toThrow(VerifyError);
  });

  test('a byte of code changed', () => {
    const u = plan.units[5];
    const bad = Uint8Array.from(good);
    bad[textOff + layout.newStart[u.index] - img.textStart] ^= 0x40;
    expect(() => verifyImage(img, layout, bad)).toThrow(VerifyError);
  });

  test('a stray byte in the int3 fill or in data', () => {
    const bad = Uint8Array.from(good);
    bad[textOff + (layout.usedEnd - img.textStart)] = 0x90;
    if (layout.usedEnd < img.textEnd) expect(() => verifyImage(img, layout, bad)).toThrow(/gap not filled with int3/);
    const bad2 = Uint8Array.from(good);
    const rodata = sectionByName(img.elf, '.rodata')!;
    bad2[rodata.sh_offset + 3] ^= 1;
    expect(() => verifyImage(img, layout, bad2)).toThrow(/unexplained change in \.rodata/);
  });
});
