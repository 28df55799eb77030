/**
 * `inspect`: is a library randomizable, and if not, why. Runs the read and unit phases, and plans
 * one layout: a library whose units fit in no order (alignment padding with no slack in .text) is
 * refused by `randomize` whatever the seed, so inspect must not call it randomizable.
 */
import { ElfFormatError, ElfRefusal } from './errors';
import { loadImage } from './image';
import { layoutEntropyBits, planLayout, ShuffleRng } from './layout';
import { findUnits } from './units';

export interface InspectReport {
  readonly randomizable: boolean;
  readonly reason?: string;
  readonly units?: number;
  /** Symbols that had to stay with another one (joined atoms), and why. */
  readonly joinedSymbols?: number;
  readonly joinReasons?: Record<string, number>;
  readonly entropyBits?: number;
  /** The alignment every unit start shows, and the units kept at their data's alignment (alignment.ts). */
  readonly commonAlignment?: number;
  readonly dataAlignedUnits?: number;
  readonly textBytes?: number;
  readonly sectionsTouched?: string[];
}

export function inspectBytes(bytes: Uint8Array): InspectReport {
  try {
    const img = loadImage(bytes);
    const plan = findUnits(img);
    if (plan.units.length < 2) return { randomizable: false, reason: `only ${plan.units.length} movable unit(s)` };
    // A probe seed, not bound to the library (no hash of it): only whether an order fits is asked.
    const layout = planLayout(plan, img.textStart, img.textEnd, new ShuffleRng(Buffer.from('inspect'), new Uint8Array(0)));
    const touched = ['.text', ...img.otherExec.filter((s) => plan.otherExecRefs.some((r) => r.ip >= s.sh_addr && r.ip < s.sh_addr + s.sh_size)).map((s) => s.name)];
    for (const n of ['.dynsym', '.symtab', '.rela.dyn', '.eh_frame', '.eh_frame_hdr', '.rodata', '.dynamic', '.note.gnu.build-id']) {
      if (img.elf.sections.some((s) => s.name === n)) touched.push(n);
    }
    return {
      randomizable: true, units: plan.units.length, joinedSymbols: plan.joined.atoms,
      joinReasons: Object.fromEntries(plan.joined.reasons), entropyBits: Math.round(layoutEntropyBits(layout) * 10) / 10,
      commonAlignment: plan.alignment.common, dataAlignedUnits: plan.alignment.dataKept,
      textBytes: img.text.sh_size, sectionsTouched: touched,
    };
  } catch (e) {
    if (e instanceof ElfRefusal || e instanceof ElfFormatError) return { randomizable: false, reason: e.message };
    throw e;
  }
}
