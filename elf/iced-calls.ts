/**
 * The four iced-x86 calls made per decoded instruction (decode, length, code, RIP-relative?),
 * as plain functions of the decoder's and instruction's handles.
 *
 * iced-x86's classes are wasm-bindgen wrappers: each getter is a JS method that checks its
 * argument and calls one export of the wasm module with the object's pointer. Until the JIT has
 * compiled and inlined them (the first randomizations of a process), those wrapper frames cost
 * more than the wasm work. The package exposes its wasm exports (`__wasm`), so the decoding loop
 * can call them directly with the same pointers: same decoder, same results, no wrapper.
 *
 * The shortcut is used only if it is there and agrees with the wrappers on a few probe
 * instructions (see `probe`); otherwise the wrappers are used, at their usual cost.
 */
import * as iced from 'iced-x86';
import { Decoder, DecoderOptions, Instruction } from 'iced-x86';

export interface IcedCalls {
  /** Handles to pass to the functions below (the wasm pointers; unused by the wrappers). */
  readonly d: number;
  readonly i: number;
  readonly decodeOut: (d: number, i: number) => void;
  readonly length: (i: number) => number;
  readonly code: (i: number) => number;
  /** Nonzero when the memory operand is RIP-relative. */
  readonly isIpRel: (i: number) => number;
}

interface RawExports {
  decoder_decodeOut(d: number, i: number): void;
  instruction_length(i: number): number;
  instruction_code(i: number): number;
  instruction_isIpRelMemoryOperand(i: number): number;
}

function rawExports(): RawExports | undefined {
  const w = (iced as unknown as { __wasm?: Partial<RawExports> }).__wasm;
  if (!w) return undefined;
  const names = ['decoder_decodeOut', 'instruction_length', 'instruction_code', 'instruction_isIpRelMemoryOperand'] as const;
  return names.every((n) => typeof w[n] === 'function') ? (w as RawExports) : undefined;
}

/** The wasm pointer behind a wasm-bindgen object, or 0 when it has none we recognize. */
function pointer(o: object): number {
  const p = (o as { __wbg_ptr?: unknown }).__wbg_ptr;
  return typeof p === 'number' && Number.isInteger(p) && p > 0 ? p : 0;
}

function viaWrappers(decoder: Decoder, ins: Instruction): IcedCalls {
  return {
    d: 0, i: 0,
    decodeOut: () => decoder.decodeOut(ins),
    length: () => ins.length,
    code: () => ins.code,
    isIpRel: () => (ins.isIpRelMemoryOperand ? 1 : 0),
  };
}

function direct(w: RawExports, decoder: Decoder, ins: Instruction): IcedCalls | undefined {
  const d = pointer(decoder);
  const i = pointer(ins);
  if (d === 0 || i === 0) return undefined;
  // The exports themselves, not closures around them: no JS frame between the loop and wasm.
  return {
    d, i,
    decodeOut: w.decoder_decodeOut, length: w.instruction_length, code: w.instruction_code, isIpRel: w.instruction_isIpRelMemoryOperand,
  };
}

/**
 * Probe code: a RIP-relative lea, a call rel32, a memory operand that is not RIP-relative, a
 * short jump, an invalid byte sequence. The direct calls must give what the wrappers give.
 */
const PROBE = Uint8Array.from([0x48, 0x8d, 0x05, 0x10, 0x00, 0x00, 0x00, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x8b, 0x43, 0x08, 0xeb, 0xfe, 0x0f, 0x0b, 0xff, 0xff]);

let verdict: boolean | undefined;
function probe(w: RawExports): boolean {
  const dec1 = new Decoder(64, PROBE, DecoderOptions.None);
  const dec2 = new Decoder(64, PROBE, DecoderOptions.None);
  const a = new Instruction();
  const b = new Instruction();
  try {
    const slow = viaWrappers(dec1, a);
    const fast = direct(w, dec2, b);
    if (!fast) return false;
    for (let n = 0; n < 8 && dec1.canDecode; n++) {
      slow.decodeOut(slow.d, slow.i);
      fast.decodeOut(fast.d, fast.i);
      if (slow.length(0) !== fast.length(fast.i) || slow.code(0) !== fast.code(fast.i) || (slow.isIpRel(0) !== 0) !== (fast.isIpRel(fast.i) !== 0)) return false;
      if (dec1.position !== dec2.position) return false;
    }
    return true;
  } catch {
    return false;
  } finally {
    dec1.free(); dec2.free(); a.free(); b.free();
  }
}

/** The per-instruction calls for `decoder` decoding into `ins`: direct when the probe agreed. */
export function icedCalls(decoder: Decoder, ins: Instruction): IcedCalls {
  const w = rawExports();
  if (w && (verdict ??= probe(w))) return direct(w, decoder, ins) ?? viaWrappers(decoder, ins);
  return viaWrappers(decoder, ins);
}
