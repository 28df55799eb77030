/**
 * The four iced-x86 calls made per decoded instruction (decode, length, code, RIP-relative?),
 * as plain functions of the decoder's and instruction's handles, and the wasm memory where the
 * last three can be read instead.
 *
 * iced-x86's classes are wasm-bindgen wrappers: each getter is a JS method that checks its
 * argument and calls one export of the wasm module with the object's pointer. Until the JIT has
 * compiled and inlined them (the first randomizations of a process), those wrapper frames cost
 * more than the wasm work. The package exposes its wasm exports (`__wasm`), so the decoding loop
 * can call them directly with the same pointers: same decoder, same results, no wrapper.
 *
 * Even compiled and inlined, the three getters after each decode cost a third of the decoding
 * (measured on SQLite's .text: 21 ms with them, 14 ms with the decode call alone). They read
 * three fields of the Instruction, which lives in the wasm memory at its pointer: `memory` lets
 * the loop read those fields itself (see `lengthAt` and the offsets below).
 *
 * Each shortcut is used only if it is there and agrees with the wrappers on the probe
 * instructions (see `probe`); otherwise the wrappers are used, at their usual cost.
 */
import * as iced from 'iced-x86';
import { Decoder, DecoderOptions, Instruction, Register } from 'iced-x86';

export interface IcedCalls {
  /** Handles to pass to the functions below (the wasm pointers; unused by the wrappers). */
  readonly d: number;
  readonly i: number;
  readonly decodeOut: (d: number, i: number) => void;
  readonly length: (i: number) => number;
  readonly code: (i: number) => number;
  /** Nonzero when the memory operand is RIP-relative. */
  readonly isIpRel: (i: number) => number;
  /**
   * The wasm memory holding the Instruction at handle `i`, when its fields may be read there
   * (`lengthAt`, `codeAt`, `isIpRelAt` over a Uint8Array of its current buffer); else undefined.
   */
  readonly memory: WasmMemory | undefined;
}

/** A WebAssembly.Memory (the tsconfig's libs do not declare WebAssembly): its buffer is replaced when it grows. */
export interface WasmMemory {
  readonly buffer: ArrayBuffer;
}

// Where iced-x86 1.21.0 (the pinned version) keeps an Instruction's fields, in bytes from its wasm
// pointer: Code (u16), the memory operand's base register (u8) and the length (u8). A struct's
// layout is fixed when the wasm is built, so agreeing on the probe means agreeing everywhere; the
// verifier decodes through the same loop, so a wrong offset is refused by the probe, not caught later.
export const CODE_AT = 40;
const BASE_AT = 43;
export const LENGTH_AT = 46;

export function lengthAt(mem: Uint8Array, i: number): number {
  return mem[i + LENGTH_AT];
}

export function codeAt(mem: Uint8Array, i: number): number {
  return mem[i + CODE_AT] | (mem[i + CODE_AT + 1] << 8);
}

/** True when the memory operand is RIP-relative (iced's own test: the base is RIP or EIP). */
export function isIpRelAt(mem: Uint8Array, i: number): boolean {
  const base = mem[i + BASE_AT];
  return base === Register.RIP || base === Register.EIP;
}

interface RawExports {
  /** Checked only when the fields are to be read from it (see `direct`). */
  memory?: WasmMemory;
  decoder_decodeOut(d: number, i: number): void;
  instruction_length(i: number): number;
  instruction_code(i: number): number;
  instruction_isIpRelMemoryOperand(i: number): number;
}

/** An ArrayBuffer of any realm (jest runs tests in another realm than the wasm module's). */
function isArrayBuffer(b: unknown): boolean {
  return Object.prototype.toString.call(b) === '[object ArrayBuffer]';
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
    memory: undefined,
  };
}

function direct(w: RawExports, decoder: Decoder, ins: Instruction, readFields: boolean): IcedCalls | undefined {
  const d = pointer(decoder);
  const i = pointer(ins);
  if (d === 0 || i === 0) return undefined;
  // The exports themselves, not closures around them: no JS frame between the loop and wasm.
  return {
    d, i,
    decodeOut: w.decoder_decodeOut, length: w.instruction_length, code: w.instruction_code, isIpRel: w.instruction_isIpRelMemoryOperand,
    memory: readFields && isArrayBuffer(w.memory?.buffer) ? w.memory : undefined,
  };
}

/**
 * Probe code: a RIP-relative lea, a call rel32, a memory operand that is not RIP-relative, a
 * short jump, ud2, a 9-byte nop with an index register (Code above 1024), an EIP-relative load,
 * a 1-byte ret, an invalid byte sequence. The direct calls, and the fields read from memory, must give what the
 * wrappers give.
 */
const PROBE = Uint8Array.from([
  0x48, 0x8d, 0x05, 0x10, 0x00, 0x00, 0x00, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x8b, 0x43, 0x08, 0xeb, 0xfe, 0x0f, 0x0b,
  0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00, 0x67, 0x8b, 0x05, 0x01, 0x02, 0x03, 0x04, 0xc3, 0xff, 0xff,
]);

/** What the probe allowed: the direct calls, and reading the fields from memory. */
let verdict: { calls: boolean; fields: boolean } | undefined;
function probe(w: RawExports): { calls: boolean; fields: boolean } {
  const dec1 = new Decoder(64, PROBE, DecoderOptions.None);
  const dec2 = new Decoder(64, PROBE, DecoderOptions.None);
  const a = new Instruction();
  const b = new Instruction();
  const no = { calls: false, fields: false };
  try {
    const slow = viaWrappers(dec1, a);
    const fast = direct(w, dec2, b, false);
    if (!fast) return no;
    let fields = true;
    for (let n = 0; n < 10 && dec1.canDecode; n++) {
      slow.decodeOut(slow.d, slow.i);
      fast.decodeOut(fast.d, fast.i);
      const [length, code, ipRel] = [slow.length(0), slow.code(0), slow.isIpRel(0) !== 0];
      if (length !== fast.length(fast.i) || code !== fast.code(fast.i) || ipRel !== (fast.isIpRel(fast.i) !== 0)) return no;
      if (dec1.position !== dec2.position) return no;
      const mem = isArrayBuffer(w.memory?.buffer) ? new Uint8Array(w.memory!.buffer) : undefined;
      if (!mem || lengthAt(mem, fast.i) !== length || codeAt(mem, fast.i) !== code || isIpRelAt(mem, fast.i) !== ipRel) fields = false;
    }
    return { calls: true, fields };
  } catch {
    return no;
  } finally {
    dec1.free(); dec2.free(); a.free(); b.free();
  }
}

/** The per-instruction calls for `decoder` decoding into `ins`: direct when the probe agreed. */
export function icedCalls(decoder: Decoder, ins: Instruction): IcedCalls {
  const w = rawExports();
  if (!w) return viaWrappers(decoder, ins);
  const allowed = (verdict ??= probe(w));
  return (allowed.calls ? direct(w, decoder, ins, allowed.fields) : undefined) ?? viaWrappers(decoder, ins);
}
