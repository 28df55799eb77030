/**
 * The randomizer pipeline: read → find units → plan layout → move code → patch references →
 * rebuild metadata → verify → write. Each phase lives in its own module; this one only
 * sequences them and reports.
 */
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { ElfRefusal } from './errors';
import { checkOutputPath, readRegularFile } from './files';
import { Image, loadImage } from './image';
import { Layout, layoutEntropyBits, planLayout, ShuffleRng } from './layout';
import { moveCodeAndPatch, PatchStats } from './patch';
import { findUnits, UnitPlan } from './units';
import { verifyImage, VerifyMode, VerifyReport } from './verify';
import { keptRanges, rebuildFile, WriteReport } from './writer';

export interface RandomizeResult {
  readonly bytes: Uint8Array;
  readonly seed: Uint8Array;
  readonly units: number;
  readonly entropyBits: number;
  readonly textBytes: number;
  readonly patch: PatchStats;
  readonly verify: VerifyReport;
  readonly write: WriteReport;
  /** Unit index order, for tests and the bench (which unit was placed first, ...). */
  readonly layout: Layout;
  readonly timingsMs: Record<string, number>;
}

/**
 * Parses a --seed value: hex, 1..64 bytes (a RangeError otherwise: a usage error, not a refusal).
 * Short seeds are accepted for reproducible tests; the default (no seed) is 32 random bytes.
 */
export function parseSeed(hex: string): Uint8Array {
  const h = hex.startsWith('0x') ? hex.slice(2) : hex;
  if (!/^[0-9a-fA-F]+$/.test(h) || h.length % 2 !== 0 || h.length > 128) throw new RangeError(`bad seed '${hex}': want an even number of hex digits (at most 64 bytes)`);
  return Uint8Array.from(Buffer.from(h, 'hex'));
}

/** The bytes the loader maps (headers to the end of the last segment): what the RNG is bound to. */
function loadablePart(img: Image): Uint8Array {
  let end = 0;
  for (const p of img.elf.segments) end = Math.max(end, p.p_offset + p.p_filesz);
  return img.elf.bytes.subarray(0, Math.max(end, 64));
}

export interface RandomizeOptions {
  /** How the verifier reads the output code (see verify.ts); default 'decode'. */
  readonly verify?: VerifyMode;
}

/**
 * The seed-independent half of the pipeline (read, eligibility, decode, units). A daemon that
 * re-randomizes the same library every epoch can keep this and pay only for the rest.
 */
export interface PreparedLibrary {
  readonly img: Image;
  readonly plan: UnitPlan;
  readonly timingsMs: Readonly<Record<string, number>>;
}

export function prepareLibrary(input: Uint8Array): PreparedLibrary {
  const t0 = performance.now();
  const img: Image = loadImage(input);
  const t1 = performance.now();
  const plan: UnitPlan = findUnits(img);
  const t2 = performance.now();
  if (plan.units.length < 2) throw new ElfRefusal(`only ${plan.units.length} movable unit(s): nothing to shuffle`);
  return { img, plan, timingsMs: { read: t1 - t0, units: t2 - t1 } };
}

/** Working copy of the input, kept from one randomization to the next (see randomizePrepared). */
let workCopy: Uint8Array | undefined;

/** The seed-dependent half: plan layout → move code → patch → rebuild → verify. */
export function randomizePrepared(prep: PreparedLibrary, seed: Uint8Array = randomBytes(32), opts: RandomizeOptions = {}): RandomizeResult {
  const { img, plan } = prep;
  const input = img.elf.bytes;
  const t: Record<string, number> = { ...prep.timingsMs };
  let t0 = performance.now();
  const lap = (name: string) => { const n = performance.now(); t[name] = n - t0; t0 = n; };
  const layout = planLayout(plan, img.textStart, img.textEnd, new ShuffleRng(seed, loadablePart(img)));
  lap('layout');
  // A copy with the same size and layout, filled only where the output is made from: the pages of
  // stripped debug sections are never touched (first-touch page faults dominate copying here).
  // Only the kept ranges are ever read back, so the buffer is reused by the next randomization in
  // the process (stale bytes elsewhere are never seen).
  if (!workCopy || workCopy.length < input.length) workCopy = new Uint8Array(input.length);
  const patched = workCopy.subarray(0, input.length);
  for (const [s, e] of keptRanges(img.elf)) patched.set(input.subarray(s, e), s);
  const patch = moveCodeAndPatch(img, layout, patched);
  lap('patch');
  // The symbol tables loadImage read (the same bytes: the writer needs only their section indexes).
  const known = (s: { index: number }) => (s.index === img.symtab.section.index ? img.symtab.symbols : s.index === img.dynsym?.section.index ? img.dynsym.symbols : undefined);
  const { bytes, report } = rebuildFile(img.elf, patched, known);
  lap('write');
  const verify = verifyImage(img, layout, bytes, opts.verify ?? 'decode');
  lap('verify');
  return {
    bytes, seed, units: plan.units.length, entropyBits: layoutEntropyBits(layout), textBytes: img.text.sh_size,
    patch, verify, write: report, layout, timingsMs: t,
  };
}

export function randomizeBytes(input: Uint8Array, seed: Uint8Array = randomBytes(32), opts: RandomizeOptions = {}): RandomizeResult {
  return randomizePrepared(prepareLibrary(input), seed, opts);
}

/**
 * Randomizes IN into OUT. The image is written under a temporary name in OUT's directory and
 * renamed only after verification, so a refusal never leaves a file behind and readers never see
 * a partial image.
 */
export function randomizeFile(inPath: string, outPath: string, seed?: Uint8Array, opts: RandomizeOptions = {}): RandomizeResult {
  checkOutputPath(outPath);
  const input = readRegularFile(inPath);
  const res = randomizeBytes(input.bytes, seed, opts);
  const dir = path.dirname(path.resolve(outPath));
  const tmp = path.join(dir, `.${path.basename(outPath)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    // Never group/world-writable, whatever the input's mode: images are shared by every process.
    const mode = input.mode & 0o755;
    // 'wx' (O_CREAT|O_EXCL): never write through a file or symlink someone planted at the temp name.
    const fd = fs.openSync(tmp, 'wx', mode);
    try {
      for (let off = 0; off < res.bytes.length;) off += fs.writeSync(fd, res.bytes, off);
      fs.fsyncSync(fd); // durable before it becomes visible under its name
    } finally {
      fs.closeSync(fd);
    }
    checkOutputPath(outPath); // again: the check above was before the (long) work
    fs.renameSync(tmp, outPath);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  return res;
}
