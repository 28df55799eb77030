/**
 * Phase 3: plan the new layout.
 *
 * The order of units is a uniformly random permutation drawn from a deterministic CSPRNG
 * (AES-256-CTR under an HMAC-SHA256-derived key), keyed by the seed and bound to the SHA-256 of
 * the library's loadable part, so the same input and seed always give the same bytes, and one
 * epoch seed gives unrelated orders to different libraries. Units are placed in that order inside
 * the original .text extent, each at its alignment (filling holes that alignment leaves), so no
 * section or segment moves and the library keeps its size. A permutation that does not fit, or
 * leaves a unit at its own address, is redrawn from the stream: the order is uniform over the
 * permutations that fit and move every unit (except in planLayout's fallbacks, below: orders
 * sorted strictest alignment first, uniform inside each alignment class; every order of a
 * library of a few units; the fitting draw that leaves the fewest units in place). Alignment is
 * a congruence (new start ≡ start mod align, see alignment.ts). The entropy reported counts
 * orders (log2(units!), or the sum over alignment classes for a sorted order): an upper bound,
 * since hole filling can give two orders the same placement.
 */
import { Cipher, createCipheriv, createHash, createHmac } from 'crypto';
import { ElfRefusal } from './errors';
import { Unit, UnitPlan, unitIndexAt } from './units';

/**
 * Deterministic CSPRNG: AES-256-CTR keystream (counter from zero) under a key derived as
 * HMAC-SHA256(seed, "fscache/elf-shuffle/v1" || SHA-256(input)). Same seed and input, same stream.
 */
export class ShuffleRng {
  private readonly cipher: Cipher;
  private buf = Buffer.alloc(0);
  private pos = 0;
  private static readonly CHUNK = Buffer.alloc(4096);

  constructor(seed: Uint8Array, input: Uint8Array) {
    // `input` is the loadable part of the library (what ends up mapped), not its debug info.
    // Binding the key to the input hash: one seed never yields correlated orders across libraries.
    const inputHash = createHash('sha256').update(input).digest();
    const key = createHmac('sha256', Buffer.from(seed)).update('fscache/elf-shuffle/v1').update(inputHash).digest();
    this.cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  }

  /** Next 6 stream bytes as an integer below 2^48. */
  private next48(): number {
    if (this.pos + 6 > this.buf.length) {
      this.buf = this.cipher.update(ShuffleRng.CHUNK); // keystream = AES-CTR over zeros
      this.pos = 0;
    }
    const v = this.buf.readUIntBE(this.pos, 6);
    this.pos += 6;
    return v;
  }

  /** Uniform integer in [0, n), by rejection sampling over 48-bit draws (no modulo bias). */
  below(n: number): number {
    if (n <= 1) return 0;
    const range = 2 ** 48;
    const limit = range - (range % n);
    for (;;) {
      const v = this.next48();
      if (v < limit) return v % n;
    }
  }
}

/** Fisher–Yates shuffle of 0..n-1. */
export function permutation(n: number, rng: ShuffleRng): number[] {
  const p = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.below(i + 1);
    const t = p[i]; p[i] = p[j]; p[j] = t;
  }
  return p;
}

export interface Layout {
  readonly plan: UnitPlan;
  /** Order in which units are placed. */
  readonly order: number[];
  /** New start address of each unit, by unit index. */
  readonly newStart: Float64Array;
  readonly textStart: number;
  readonly textEnd: number;
  /** End of the last placed unit; [usedEnd, textEnd) is filled with int3. */
  readonly usedEnd: number;
  /** Permutations drawn until the one taken (1 = the first one; MAX_DRAWS + 1: every order was tried). */
  readonly draws: number;
  /** Units at their own input address (0 unless no draw could move them all). */
  readonly unmoved: number;
  /** The order was sorted by alignment, strictest first (no random order fitted): see planLayout. */
  readonly strictFirst: boolean;
}

/** log2(n!) — entropy of a uniform permutation of n units, in bits. */
export function entropyBits(n: number): number {
  let s = 0;
  for (let i = 2; i <= n; i++) s += Math.log2(i);
  return s;
}

/**
 * First address at or above `a` that is congruent to the unit's start modulo its alignment (a
 * plain alignUp for units that start on a multiple of it; units holding aligned data may not).
 */
export function alignLike(a: number, u: Unit): number {
  const phase = u.start % u.align;
  return a + ((((phase - a) % u.align) + u.align) % u.align);
}

/** Holes searched per unit: bounds the work on inputs with very many units. */
const MAX_HOLES_SEARCHED = 64;

/**
 * Places units in the permuted order. Alignment padding in front of a unit leaves a hole; a later
 * unit (in permutation order) that fits a hole with its own alignment goes there instead of the
 * end. This keeps the order random while wasting little more padding than the linker did, so the
 * permutation fits the original .text extent.
 */
function place(units: Unit[], order: number[], textStart: number): { newStart: Float64Array; end: number } {
  const newStart = new Float64Array(units.length);
  // Holes in placement order, as parallel arrays of starts and ends (no object per hole).
  const holeS: number[] = [];
  const holeE: number[] = [];
  let cur = textStart;
  for (const ui of order) {
    const u = units[ui];
    const size = u.coreEnd - u.start;
    let placed = false;
    for (let h = 0; h < holeS.length && h < MAX_HOLES_SEARCHED; h++) {
      const hs = holeS[h];
      const he = holeE[h];
      const s = alignLike(hs, u);
      if (s + size > he) continue;
      newStart[ui] = s;
      // The hole is replaced, in place, by what is left of it before and after the unit.
      const restS: number[] = [];
      const restE: number[] = [];
      if (s > hs) { restS.push(hs); restE.push(s); }
      if (s + size < he) { restS.push(s + size); restE.push(he); }
      holeS.splice(h, 1, ...restS);
      holeE.splice(h, 1, ...restE);
      placed = true;
      break;
    }
    if (placed) continue;
    const s = alignLike(cur, u);
    if (s > cur) { holeS.push(cur); holeE.push(s); }
    newStart[ui] = s;
    cur = s + size;
  }
  return { newStart, end: cur };
}

/**
 * What a report says of units left at their own address ('' when every unit moved). For the CLI
 * and the daemon's log alike.
 */
export function unmovedNote(layout: Layout): string {
  return layout.unmoved > 0 ? `${layout.unmoved} unit(s) left at their own address (no order tried moves them all)` : '';
}

/** Units placed at their own input address. */
function unmovedUnits(units: Unit[], newStart: Float64Array): number {
  let n = 0;
  for (let i = 0; i < units.length; i++) if (newStart[i] === units[i].start) n++;
  return n;
}

/**
 * Tries permutations from the stream until one fits the original extent and moves every unit.
 * A unit left at its own address keeps every gadget an attacker knows from the original build
 * (in a small library that is percents of its code), so such draws are redrawn too. When no
 * draw of MAX_DRAWS moves them all (fitting orders are rare: little slack in .text, or a few units
 * whose sizes and alignments leave no other place), the first fitting draw with the fewest
 * unmoved units is taken and `unmoved` says how many.
 *
 * The room is .text's own extent. The executable segment's page tail after .fini is not used:
 * .fini (with DT_FINI and _fini) would have to move behind a grown .text and the segment's sizes
 * change, which the writer's promise (no section or segment moves) and the verifier exclude. With
 * alignment taken from evidence, the orders the linker's own padding allows are enough for the
 * libraries measured (bench/RESULTS.md, "Alignment from evidence").
 */
export function planLayout(plan: UnitPlan, textStart: number, textEnd: number, rng: ShuffleRng): Layout {
  const MAX_DRAWS = 64;
  let best: Layout | undefined;
  // Random orders first; then, when none of them fits and moves every unit, orders with the
  // strictest alignments placed first (a random order inside each alignment class): the large
  // holes then come before any unit and the small-aligned units fill them (as ld's
  // --sort-section=alignment packs). Less entropy (layoutEntropyBits says how much), but a fit where
  // random orders of a library with a few 32- or 64-aligned units almost never fit.
  for (const strictFirst of [false, true]) {
    for (let attempt = 0; attempt < MAX_DRAWS; attempt++) {
      const drawn = permutation(plan.units.length, rng);
      const order = strictFirst ? byAlignment(plan.units, drawn) : drawn;
      const { newStart, end } = place(plan.units, order, textStart);
      if (end > textEnd) continue;
      const unmoved = unmovedUnits(plan.units, newStart);
      if (!best || unmoved < best.unmoved) {
        best = { plan, order, newStart, textStart, textEnd, usedEnd: end, draws: attempt + 1 + (strictFirst ? MAX_DRAWS : 0), unmoved, strictFirst };
      }
      if (unmoved === 0) return best;
    }
    // Few units: every order is tried below rather than sorted ones.
    if (plan.units.length <= MAX_ENUMERATED_UNITS) break;
  }
  // A library of a few units can have so few fitting orders that 64 draws miss them all, or miss
  // those that move the most units (a 4-unit library: no fit for about 3 seeds in 1000, and every
  // unit left in place for 1 in 20). Its orders are few enough to try every one.
  if (plan.units.length <= MAX_ENUMERATED_UNITS) {
    const l = enumeratedLayout(plan, textStart, textEnd, rng);
    if (l) return { ...l, draws: MAX_DRAWS + 1, strictFirst: false };
  }
  if (best) return best;
  throw new ElfRefusal(`no permutation of ${plan.units.length} units fits in .text after ${MAX_DRAWS} draws and ${MAX_DRAWS} strictest-alignment-first draws (alignment padding)`);
}

/** `order` stably sorted by alignment, largest first. */
function byAlignment(units: Unit[], order: number[]): number[] {
  return order.map((u, i) => [u, i]).sort((a, b) => units[b[0]].align - units[a[0]].align || a[1] - b[1]).map((x) => x[0]);
}

/**
 * Entropy of the layout's kind of order, in bits: log2(n!) for a uniform permutation; for a
 * strictest-first order, the sum over alignment classes of log2(size!) (the classes' order is fixed).
 */
export function layoutEntropyBits(layout: Layout): number {
  if (!layout.strictFirst) return entropyBits(layout.plan.units.length);
  const classes = new Map<number, number>();
  for (const u of layout.plan.units) classes.set(u.align, (classes.get(u.align) ?? 0) + 1);
  let bits = 0;
  for (const n of classes.values()) bits += entropyBits(n);
  return bits;
}

/** Up to this many units (7! = 5040 orders), every order is tried when no random draw moved every unit. */
const MAX_ENUMERATED_UNITS = 7;

/**
 * Of all orders that fit, those leaving the fewest units at their own address; one of them drawn
 * uniformly from the stream. Undefined when no order fits.
 */
function enumeratedLayout(plan: UnitPlan, textStart: number, textEnd: number, rng: ShuffleRng): Omit<Layout, 'draws' | 'strictFirst'> | undefined {
  const n = plan.units.length;
  let fewest = Infinity;
  let candidates: number[][] = [];
  const order = Array.from({ length: n }, (_, i) => i);
  const visit = (k: number): void => {
    if (k === n) {
      const { newStart, end } = place(plan.units, order, textStart);
      if (end > textEnd) return;
      const unmoved = unmovedUnits(plan.units, newStart);
      if (unmoved < fewest) { fewest = unmoved; candidates = []; }
      if (unmoved === fewest) candidates.push([...order]);
      return;
    }
    for (let i = k; i < n; i++) {
      [order[k], order[i]] = [order[i], order[k]];
      visit(k + 1);
      [order[k], order[i]] = [order[i], order[k]];
    }
  };
  visit(0);
  if (candidates.length === 0) return undefined;
  const chosen = candidates[rng.below(candidates.length)];
  const { newStart, end } = place(plan.units, chosen, textStart);
  return { plan, order: chosen, newStart, textStart, textEnd, usedEnd: end, unmoved: fewest };
}

/**
 * Where an input address in .text is in the output: same offset inside its unit's new place.
 * Addresses outside .text do not move.
 */
export function mapAddress(layout: Layout, addr: number): number {
  if (addr < layout.textStart || addr >= layout.textEnd) return addr;
  const u = unitIndexAt(layout.plan, addr);
  return layout.newStart[u] + (addr - layout.plan.units[u].start);
}

/** True when `addr` lies in the copied bytes of its unit (a valid target for code references). */
export function inCore(layout: Layout, addr: number): boolean {
  const u = layout.plan.units[unitIndexAt(layout.plan, addr)];
  return addr >= u.start && addr < u.coreEnd;
}
