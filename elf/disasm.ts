/**
 * Linear-sweep decoding of x86-64 code with iced-x86 into compact arrays.
 *
 * Only what the randomizer and verifier need is kept per instruction: address, length, iced
 * `Code`, and — for PC-relative instructions — where the relative field sits, its size and the
 * absolute address it reaches. Typed arrays keep memory proportional to the code size.
 */
import { CodeExt, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpCodeOperandKind, OpKind } from 'iced-x86';
import { CODE_AT, icedCalls, IcedCalls, isIpRelAt, LENGTH_AT } from './iced-calls';
import { narrowed } from './reader';

export const REF_NONE = 0;
/** Near branch / call with a relative immediate (rel8 or rel32). */
export const REF_BRANCH = 1;
/** Memory operand addressed relative to RIP (disp32). */
export const REF_RIPREL = 2;

// Bits of `DecodedRange.flags`.
/** The instruction cannot fall through (ret, jmp, ud2, hlt, int3 ...). */
export const F_TERMINATOR = 1;
/** A padding instruction (nop, int3). */
export const F_PADDING = 2;

/** iced's `Code.INVALID`: also given to an instruction that runs across a cut. */
export const CODE_INVALID = 0;

/** Decoded instructions of one contiguous code range. */
export interface DecodedRange {
  readonly start: number;
  readonly count: number;
  /**
   * Address of each instruction: 32-bit when the whole range lies below 4 GiB (every real library:
   * half the memory of doubles), doubles otherwise.
   */
  readonly ip: Uint32Array | Float64Array;
  readonly len: Uint8Array;
  /** iced `Code` of the instruction; CODE_INVALID when the bytes do not decode. */
  readonly code: Uint16Array;
  /** F_* bits. */
  readonly flags: Uint8Array;
  /**
   * Indexes of the instructions with a PC-relative field, ascending (about one in four). The
   * arrays below are indexed like `refs` (by operand, not by instruction): on this VM every fresh
   * page costs a fault, and per-instruction arrays for one operand in four doubled the memory
   * the decoding touches.
   */
  readonly refs: Int32Array;
  /** REF_* kind of the PC-relative field. */
  readonly refKind: Uint8Array;
  /** Offset of the PC-relative field inside the instruction. */
  readonly fieldOff: Uint8Array;
  /** Size in bytes of the PC-relative field (1 or 4). */
  readonly fieldSize: Uint8Array;
  /** Absolute address the PC-relative field reaches (32-bit when every target fits, see `narrowed`). */
  readonly target: Int32Array | Uint32Array | Float64Array;
}

let sharedInstr: Instruction | undefined;

// Per-`Code` facts, learnt from the first instance of each instruction form (each getter is a
// wasm call) and kept in flat tables indexed by Code, so that the decoding loop reads typed arrays
// only. Bits of `codeBits`, besides F_TERMINATOR and F_PADDING (copied to the instruction's flags):
/** The form has been seen (0 in `codeBits`: not learnt yet). */
const C_KNOWN = 4;
/** Near branch/call with a relative target. */
const C_BRANCH = 8;
/** Branch with a 64-bit target (op0 NearBranch64): target = next ip + rel, no truncation. */
const C_BRANCH64 = 16;
/** The form can address memory (and so be RIP-relative): only then is isIpRelMemoryOperand asked. */
const C_MEMORY = 32;
const codeBits = new Uint8Array(0x10000);
/**
 * Bytes from the start of the PC-relative field to the end of the instruction (field + any
 * immediates after it); fixed for a given `Code`, learnt from iced's constant offsets on the first
 * instance and reused, so that later instances need no getConstantOffsets call. 0: not learnt yet.
 */
const codeTail = new Uint8Array(0x10000);

/** Operand kinds of an opcode form that can be a ModRM memory operand (and so RIP-relative). */
const MEMORY_KIND_NAMES = /mem/i;
function learnCode(ins: Instruction, c: number): number {
  const fc = ins.flowControl;
  const mn = ins.mnemonic;
  const k0 = ins.op0Kind;
  // Whether this opcode form can address memory at all, from iced's own opcode tables.
  const oc = CodeExt.opCode(c);
  let bits = C_KNOWN;
  for (let k = 0; k < oc.opCount; k++) {
    const kind = oc.opKind(k);
    if (kind !== OpCodeOperandKind.mem_offs && MEMORY_KIND_NAMES.test(OpCodeOperandKind[kind])) bits |= C_MEMORY;
  }
  oc.free();
  if (fc === FlowControl.Return || fc === FlowControl.UnconditionalBranch || fc === FlowControl.IndirectBranch ||
    mn === Mnemonic.Ud2 || mn === Mnemonic.Hlt || mn === Mnemonic.Int3) bits |= F_TERMINATOR;
  if (mn === Mnemonic.Nop || mn === Mnemonic.Int3) bits |= F_PADDING;
  if ((k0 === OpKind.NearBranch64 || k0 === OpKind.NearBranch32 || k0 === OpKind.NearBranch16) &&
    (fc === FlowControl.UnconditionalBranch || fc === FlowControl.ConditionalBranch || fc === FlowControl.Call || fc === FlowControl.XbeginXabortXend)) {
    bits |= C_BRANCH;
    if (k0 === OpKind.NearBranch64) bits |= C_BRANCH64;
  }
  codeBits[c] = bits;
  return bits;
}

/** True when an address-size override (0x67) is among the legacy prefixes before `fieldOff`. */
function hasAddrSizePrefix(bytes: Uint8Array, start: number, fieldOff: number): boolean {
  for (let k = start; k < start + fieldOff; k++) {
    const b = bytes[k];
    if (b === 0x67) return true;
    if (!(b === 0xf0 || b === 0xf2 || b === 0xf3 || b === 0x2e || b === 0x36 || b === 0x3e || b === 0x26 || b === 0x64 || b === 0x65 || b === 0x66)) return false;
  }
  return false;
}

/** Decodes `bytes` as if loaded at `address`. Cost: one iced-x86 call per instruction (four without the memory reads). */
export function decodeRange(bytes: Uint8Array, address: number): DecodedRange {
  return decodePieces(bytes, address, []).code;
}

/**
 * A range decoded in pieces: the instructions of piece p are indexes
 * [pieceFirst[p], pieceFirst[p + 1]) of `code`, and the piece starts at address `pieceStart[p]`.
 */
export interface DecodedPieces {
  readonly code: DecodedRange;
  readonly pieceStart: Float64Array;
  readonly pieceFirst: Int32Array;
}

/**
 * A linear sweep in progress: one iced decoder over `bytes` (loaded at `address`), repositioned
 * at each span, filling `arr` from instruction `n` and operand `nRefs` on.
 */
interface Sweep {
  readonly bytes: Uint8Array;
  readonly address: number;
  readonly view: DataView;
  readonly decoder: Decoder;
  readonly ins: Instruction;
  readonly calls: IcedCalls;
  arr: DecodeArrays;
  n: number;
  nRefs: number;
}

function openSweep(bytes: Uint8Array, address: number, arr: DecodeArrays): Sweep {
  const ins = sharedInstr ?? (sharedInstr = new Instruction());
  const decoder = new Decoder(64, bytes, DecoderOptions.None);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { bytes, address, view, decoder, ins, calls: icedCalls(decoder, ins), arr, n: 0, nRefs: 0 };
}

/**
 * Decodes bytes [from, to) of the sweep's range (offsets), appending to its arrays (grown when
 * full). An instruction running past `to` (into the next function) counts as undecodable.
 */
function decodeSpan(s: Sweep, from: number, to: number): void {
  // The arrays are plain locals, not captured by any closure, so that the loop keeps them in
  // registers: this loop runs once per instruction, twice per randomization.
  let { ip, len, code, flags, refs, refKind, fieldOff, fieldSize, target } = s.arr;
  let cap = ip.length;
  let refCap = refs.length;
  let grew = false;
  let n = s.n;
  let nRefs = s.nRefs;
  const { bytes, address, view, decoder, ins } = s;
  // The per-instruction calls (see iced-calls.ts): `dp`/`ih` are their handles. When `mem` is
  // set, the instruction's fields are read from the wasm memory instead of asked for. The view is
  // taken again after any other iced call: one that allocates may grow the memory, and a grown
  // memory detaches the old buffer.
  const { d: dp, i: ih, decodeOut, length, code: codeOf, isIpRel, memory } = s.calls;
  decoder.position = from;
  decoder.ip = BigInt(address + from);
  let mem = memory ? new Uint8Array(memory.buffer) : undefined;
  let pos = from;
  while (pos < to) {
    if (n >= cap) {
      cap = Math.min(cap * 2, bytes.length + 16);
      ip = grown(ip, cap); len = grown(len, cap); code = grown(code, cap); flags = grown(flags, cap);
      grew = true;
    }
    decodeOut(dp, ih);
    // lengthAt/codeAt (iced-calls.ts) written out: until the JIT inlines them, each call costs more
    // than the read. The two must change together (test/elf/disasm.test.ts checks both).
    const l = mem ? mem[ih + LENGTH_AT] : length(ih);
    const c = mem ? mem[ih + CODE_AT] | (mem[ih + CODE_AT + 1] << 8) : codeOf(ih);
    const at = pos;
    pos += l;
    ip[n] = address + at;
    len[n] = l;
    if (c === CODE_INVALID || pos > to) {
      code[n] = CODE_INVALID;
      flags[n] = 0;
      n++;
      continue;
    }
    code[n] = c;
    let bits = codeBits[c];
    if (bits === 0) {
      bits = learnCode(ins, c);
      if (memory) mem = new Uint8Array(memory.buffer);
    }
    flags[n] = bits & (F_TERMINATOR | F_PADDING);
    const branch = (bits & C_BRANCH) !== 0;
    if (branch || ((bits & C_MEMORY) !== 0 && (mem ? isIpRelAt(mem, ih) : isIpRel(ih) !== 0))) {
      if (nRefs >= refCap) {
        refCap = Math.min(refCap * 2, cap);
        refs = grown(refs, refCap); refKind = grown(refKind, refCap); fieldOff = grown(fieldOff, refCap);
        fieldSize = grown(fieldSize, refCap); target = grown(target, refCap);
        grew = true;
      }
      const r = nRefs++;
      refs[r] = n;
      refKind[r] = branch ? REF_BRANCH : REF_RIPREL;
      let tail = codeTail[c];
      if (tail === 0) {
        tail = learnTail(decoder, ins, c, l, branch);
        if (memory) mem = new Uint8Array(memory.buffer);
      }
      const off = l - tail;
      // Targets computed from the field bytes (next ip + signed field), as the CPU does; iced
      // is asked instead for the rare forms where that is not the whole story (16/32-bit
      // branch targets, an address-size prefix on a RIP-relative operand).
      if (branch ? (bits & C_BRANCH64) !== 0 && (tail === 1 || tail === 4) : !hasAddrSizePrefix(bytes, at, off)) {
        fieldOff[r] = off;
        fieldSize[r] = branch ? tail : 4; // a branch offset is the last field
        target[r] = address + pos + (tail === 1 && branch ? view.getInt8(at + off) : view.getInt32(at + off, true));
      } else {
        const co = decoder.getConstantOffsets(ins);
        fieldOff[r] = branch ? co.immediateOffset : co.displacementOffset;
        fieldSize[r] = branch ? co.immediateSize : co.displacementSize;
        co.free();
        target[r] = Number(branch ? ins.nearBranchTarget : ins.ipRelMemoryAddress);
        if (memory) mem = new Uint8Array(memory.buffer);
      }
    }
    n++;
  }
  // No call in the loop grows the memory without the view being taken again; were it detached,
  // its reads would have been undefined: fail rather than keep them.
  if (mem && mem.byteLength === 0) throw new Error('iced-x86 memory was replaced during decoding');
  if (grew) s.arr = { ip, len, code, flags, refs, refKind, fieldOff, fieldSize, target };
  s.n = n;
  s.nRefs = nRefs;
}

/**
 * Decodes `bytes` (loaded at `address`) in pieces: decoding restarts at every cut (an address
 * inside the range), so that a function start is always an instruction start. The result is one
 * set of arrays for the whole range, in address order, with the index where each piece begins:
 * callers walk index ranges instead of per-piece views (thousands of typed-array views cost more
 * to create and collect than the loops that read them).
 */
export function decodePieces(bytes: Uint8Array, address: number, cuts: number[]): DecodedPieces {
  // Decoded into the process's reused arrays, then copied out at the exact size: fresh memory
  // costs a page fault per page on this VM (about 20 µs), and the arrays sized before decoding
  // (a third of the byte count: x86-64 code averages about 4 bytes per instruction) were a third
  // larger than needed, their operand arrays doubles before narrowing.
  const cap = Math.ceil(bytes.length / 3) + 16;
  const s = openSweep(bytes, address, sweepArrays(cap, (cap >> 2) + 16, address + bytes.length > 2 ** 32));
  const inner = [...new Set(cuts.filter((c) => c > address && c < address + bytes.length))].sort((a, b) => a - b);
  const bounds = [address, ...inner, address + bytes.length];
  const pieceStart = new Float64Array(bounds.length - 1);
  const pieceFirst = new Int32Array(bounds.length);
  try {
    for (let p = 0; p + 1 < bounds.length; p++) {
      pieceStart[p] = bounds[p];
      pieceFirst[p] = s.n;
      decodeSpan(s, bounds[p] - address, bounds[p + 1] - address);
    }
  } finally {
    s.decoder.free();
  }
  const { n, nRefs } = s;
  pieceFirst[bounds.length - 1] = n;
  scratch = s.arr;
  const { ip, len, code, flags, refs, refKind, fieldOff, fieldSize, target } = s.arr;
  const targets = target.subarray(0, nRefs);
  const narrow = narrowed(targets);
  return {
    code: {
      start: address, count: n, ip: ip.slice(0, n), len: len.slice(0, n), code: code.slice(0, n),
      flags: flags.slice(0, n), refs: refs.slice(0, nRefs), refKind: refKind.slice(0, nRefs),
      fieldOff: fieldOff.slice(0, nRefs), fieldSize: fieldSize.slice(0, nRefs), target: narrow === targets ? targets.slice() : narrow,
    },
    pieceStart, pieceFirst,
  };
}

/**
 * Decodes one span of a range at a time into the reused arrays (the verifier's reading of the
 * output, unit by unit): a decoding that is dropped right after use then touches no fresh
 * memory, and the little it touches per span stays in cache. On this VM every page first written
 * after the process grows or forks costs a fault of about 20 µs.
 */
export class SpanDecoder {
  private readonly s: Sweep;
  /** `maxSpan`: the largest span in bytes that will be decoded (larger ones grow the arrays). */
  constructor(bytes: Uint8Array, private readonly address: number, maxSpan: number) {
    const cap = maxSpan + 16; // at least one byte per instruction: never grows
    this.s = openSweep(bytes, address, sweepArrays(cap, (cap >> 2) + 16, address + bytes.length > 2 ** 32));
  }

  /**
   * Decodes addresses [start, end). The result's arrays are the shared ones: only indexes below
   * `count` (instructions) and below `refs.length` (operands) belong to it, and only until the
   * next call.
   */
  decode(start: number, end: number): DecodedRange {
    const s = this.s;
    s.n = 0;
    s.nRefs = 0;
    decodeSpan(s, start - this.address, end - this.address);
    scratch = s.arr;
    const { ip, len, code, flags, refs, refKind, fieldOff, fieldSize, target } = s.arr;
    return { start, count: s.n, ip, len, code, flags, refs: refs.subarray(0, s.nRefs), refKind, fieldOff, fieldSize, target };
  }

  free(): void {
    this.s.decoder.free();
  }
}

/**
 * The decoding arrays of the process, reused by every decoding (decodePieces copies its result
 * out of them; a SpanDecoder's results live in them until its next call).
 */
let scratch: DecodeArrays | undefined;

/** The scratch arrays when they hold `cap` instructions of this width, else new ones (which become the scratch). */
function sweepArrays(cap: number, refCap: number, wide: boolean): DecodeArrays {
  if (scratch && scratch.ip.length >= cap && (scratch.ip instanceof Float64Array) === wide) return scratch;
  return (scratch = newArrays(cap, refCap, wide));
}

/** The arrays one decoding fills (sized for instructions, or for operands from `refs` on). */
interface DecodeArrays {
  ip: Uint32Array | Float64Array;
  len: Uint8Array;
  code: Uint16Array;
  flags: Uint8Array;
  refs: Int32Array;
  refKind: Uint8Array;
  fieldOff: Uint8Array;
  fieldSize: Uint8Array;
  target: Float64Array;
}

function newArrays(cap: number, refCap: number, wide: boolean): DecodeArrays {
  return {
    ip: wide ? new Float64Array(cap) : new Uint32Array(cap), len: new Uint8Array(cap), code: new Uint16Array(cap), flags: new Uint8Array(cap),
    refs: new Int32Array(refCap), refKind: new Uint8Array(refCap), fieldOff: new Uint8Array(refCap), fieldSize: new Uint8Array(refCap),
    target: new Float64Array(refCap),
  };
}

/** A copy of `a` with room for `cap` entries. */
function grown<T extends Float64Array | Uint32Array | Uint16Array | Uint8Array | Int32Array>(a: T, cap: number): T {
  const b = new (a.constructor as new (n: number) => T)(cap);
  b.set(a as ArrayLike<number> & T);
  return b;
}

/** Learns `codeTail[c]` from iced's constant offsets of its first instance `ins` (length `l`). */
function learnTail(decoder: Decoder, ins: Instruction, c: number, l: number, branch: boolean): number {
  const co = decoder.getConstantOffsets(ins);
  const tail = l - (branch ? co.immediateOffset : co.displacementOffset);
  co.free();
  codeTail[c] = tail;
  return tail;
}

/** First index of the ascending array `xs` whose value is >= v (e.g. the first operand of an instruction range). */
export function lowerBound(xs: Int32Array, v: number): number {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < v) lo = mid + 1; else hi = mid;
  }
  return lo;
}

