/**
 * Linear-sweep decoding of x86-64 code with iced-x86 into compact arrays.
 *
 * Only what the randomizer and verifier need is kept per instruction: address, length, iced
 * `Code`, and — for PC-relative instructions — where the relative field sits, its size and the
 * absolute address it reaches. Typed arrays keep memory proportional to the code size.
 */
import { Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind } from 'iced-x86';

export const REF_NONE = 0;
/** Near branch / call with a relative immediate (rel8 or rel32). */
export const REF_BRANCH = 1;
/** Memory operand addressed relative to RIP (disp32). */
export const REF_RIPREL = 2;

/** Decoded instructions of one contiguous code range. */
export interface DecodedRange {
  readonly start: number;
  readonly count: number;
  readonly ip: Float64Array;
  readonly len: Uint8Array;
  readonly code: Uint16Array;
  /** REF_* kind of the PC-relative field, if any. */
  readonly refKind: Uint8Array;
  /** Offset of the PC-relative field inside the instruction. */
  readonly fieldOff: Uint8Array;
  /** Size in bytes of the PC-relative field (1 or 4). */
  readonly fieldSize: Uint8Array;
  /** Absolute address the PC-relative field reaches. */
  readonly target: Float64Array;
  /** 1 when the instruction cannot fall through (ret, jmp, ud2, hlt, int3 ...). */
  readonly terminator: Uint8Array;
  /** 1 for padding instructions (nop, int3). */
  readonly padding: Uint8Array;
  /** 1 when the bytes do not decode. */
  readonly invalid: Uint8Array;
}

let sharedInstr: Instruction | undefined;

/** Decodes `bytes` as if loaded at `address`. Cost: one iced-x86 decodeOut per instruction. */
export function decodeRange(bytes: Uint8Array, address: number): DecodedRange {
  const cap = bytes.length; // at least one byte per instruction
  const ip = new Float64Array(cap);
  const len = new Uint8Array(cap);
  const code = new Uint16Array(cap);
  const refKind = new Uint8Array(cap);
  const fieldOff = new Uint8Array(cap);
  const fieldSize = new Uint8Array(cap);
  const target = new Float64Array(cap);
  const terminator = new Uint8Array(cap);
  const padding = new Uint8Array(cap);
  const invalid = new Uint8Array(cap);
  const decoder = new Decoder(64, bytes, DecoderOptions.None);
  decoder.ip = BigInt(address);
  const ins = sharedInstr ?? (sharedInstr = new Instruction());
  let n = 0;
  try {
    while (decoder.canDecode) {
      decoder.decodeOut(ins);
      const l = ins.length;
      ip[n] = address + decoder.position - l;
      len[n] = l;
      if (ins.isInvalid) {
        invalid[n] = 1;
        n++;
        continue;
      }
      code[n] = ins.code;
      const fc = ins.flowControl;
      const mn = ins.mnemonic;
      if (fc === FlowControl.Return || fc === FlowControl.UnconditionalBranch || fc === FlowControl.IndirectBranch ||
          mn === Mnemonic.Ud2 || mn === Mnemonic.Hlt || mn === Mnemonic.Int3) terminator[n] = 1;
      if (mn === Mnemonic.Nop || mn === Mnemonic.Int3) padding[n] = 1;
      const k0 = ins.op0Kind;
      const isBranch = (k0 === OpKind.NearBranch64 || k0 === OpKind.NearBranch32 || k0 === OpKind.NearBranch16) &&
        (fc === FlowControl.UnconditionalBranch || fc === FlowControl.ConditionalBranch || fc === FlowControl.Call || fc === FlowControl.XbeginXabortXend);
      if (isBranch || ins.isIpRelMemoryOperand) {
        const co = decoder.getConstantOffsets(ins);
        if (isBranch) {
          refKind[n] = REF_BRANCH;
          fieldOff[n] = co.immediateOffset;
          fieldSize[n] = co.immediateSize;
          target[n] = Number(ins.nearBranchTarget);
        } else {
          refKind[n] = REF_RIPREL;
          fieldOff[n] = co.displacementOffset;
          fieldSize[n] = co.displacementSize;
          target[n] = Number(ins.ipRelMemoryAddress);
        }
        co.free();
      }
      n++;
    }
  } finally {
    decoder.free();
  }
  return {
    start: address, count: n, ip: ip.subarray(0, n), len: len.subarray(0, n), code: code.subarray(0, n),
    refKind: refKind.subarray(0, n), fieldOff: fieldOff.subarray(0, n), fieldSize: fieldSize.subarray(0, n),
    target: target.subarray(0, n), terminator: terminator.subarray(0, n), padding: padding.subarray(0, n),
    invalid: invalid.subarray(0, n),
  };
}

/** Index of the instruction that starts at or contains `addr`, or -1. Binary search over `ip`. */
export function instructionAt(d: DecodedRange, addr: number): number {
  let lo = 0;
  let hi = d.count - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (d.ip[mid] > addr) hi = mid - 1;
    else if (d.ip[mid] + d.len[mid] <= addr) lo = mid + 1;
    else return mid;
  }
  return -1;
}
