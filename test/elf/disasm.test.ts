/**
 * The decoder shortcut (field positions learnt once per instruction form, targets read from the
 * field bytes) must agree with iced-x86's own answers on every instruction of real libraries,
 * including hand-written assembly in libc.
 */
import * as fs from 'fs';
import { Decoder, FlowControl, Instruction, OpKind } from 'iced-x86';
import { decodeRange, REF_BRANCH, REF_RIPREL } from '../../elf/disasm';
import { codeAt, icedCalls, isIpRelAt, lengthAt } from '../../elf/iced-calls';
import { readElf, sectionByName } from '../../elf/reader';
import { buildSqlite } from './libs';

function crossCheck(file: string): { instructions: number; refs: number; mismatches: number } {
  const b = fs.readFileSync(file);
  const e = readElf(b);
  const t = sectionByName(e, '.text')!;
  const text = b.subarray(t.sh_offset, t.sh_offset + t.sh_size);
  const r = decodeRange(text, t.sh_addr);
  const d = new Decoder(64, text, 0);
  d.ip = BigInt(t.sh_addr);
  const ins = new Instruction();
  let k = 0;
  let refs = 0;
  let mismatches = 0;
  while (d.canDecode) {
    d.decodeOut(ins);
    const fc = ins.flowControl;
    const isBranch = ins.op0Kind === OpKind.NearBranch64 && (fc === FlowControl.UnconditionalBranch || fc === FlowControl.ConditionalBranch || fc === FlowControl.Call || fc === FlowControl.XbeginXabortXend);
    if (r.ip[k] !== Number(ins.ip) || r.len[k] !== ins.length || r.code[k] !== ins.code) mismatches++;
    // The decoder lists operands by instruction index in r.refs; its per-operand arrays follow that list.
    const listed = refs < r.refs.length && r.refs[refs] === k;
    if (isBranch || ins.isIpRelMemoryOperand) {
      const co = d.getConstantOffsets(ins);
      const off = isBranch ? co.immediateOffset : co.displacementOffset;
      const size = isBranch ? co.immediateSize : co.displacementSize;
      co.free();
      const target = Number(isBranch ? ins.nearBranchTarget : ins.ipRelMemoryAddress);
      if (!listed || r.refKind[refs] !== (isBranch ? REF_BRANCH : REF_RIPREL) || r.fieldOff[refs] !== off || r.fieldSize[refs] !== size || r.target[refs] !== target) mismatches++;
      refs++;
    } else if (listed) {
      mismatches++;
    }
    k++;
  }
  d.free();
  if (k !== r.count || refs !== r.refs.length) mismatches++;
  return { instructions: k, refs, mismatches };
}

test.each(['/usr/lib/x86_64-linux-gnu/libc.so.6', '/usr/lib/x86_64-linux-gnu/libstdc++.so.6'])('decoder agrees with iced-x86 on every instruction of %s', (f) => {
  const r = crossCheck(f);
  expect(r.instructions).toBeGreaterThan(100000);
  expect(r.refs).toBeGreaterThan(10000);
  expect(r.mismatches).toBe(0);
});

const sq = buildSqlite();
(sq.ok ? test : test.skip)('decoder agrees with iced-x86 on the SQLite build', () => {
  if (!sq.ok) return;
  expect(crossCheck(sq.lib).mismatches).toBe(0);
});

test('the decoding loop calls the wasm exports directly and reads the fields from wasm memory; both answer like the wrappers', () => {
  const b = fs.readFileSync('/usr/lib/x86_64-linux-gnu/libc.so.6');
  const t = sectionByName(readElf(b), '.text')!;
  const text = b.subarray(t.sh_offset, t.sh_offset + t.sh_size);
  const [d1, d2] = [new Decoder(64, text, 0), new Decoder(64, text, 0)];
  const [a, bIns] = [new Instruction(), new Instruction()];
  const fast = icedCalls(d2, bIns);
  expect(fast.d).not.toBe(0); // the shortcuts are in use with this iced-x86
  expect(fast.memory).toBeDefined();
  let differ = 0;
  let fieldsDiffer = 0;
  let ipRel = 0;
  let wideCode = 0;
  for (let n = 0; n < 50000 && d1.canDecode; n++) {
    d1.decodeOut(a);
    fast.decodeOut(fast.d, fast.i);
    if (a.length !== fast.length(fast.i) || a.code !== fast.code(fast.i) || a.isIpRelMemoryOperand !== (fast.isIpRel(fast.i) !== 0)) differ++;
    const mem = new Uint8Array(fast.memory!.buffer);
    if (a.length !== lengthAt(mem, fast.i) || a.code !== codeAt(mem, fast.i) || a.isIpRelMemoryOperand !== isIpRelAt(mem, fast.i)) fieldsDiffer++;
    if (a.isIpRelMemoryOperand) ipRel++;
    if (a.code > 255) wideCode++;
  }
  d1.free(); d2.free(); a.free(); bIns.free();
  // RIP-relative operands and Codes needing both bytes were among them.
  expect(ipRel).toBeGreaterThan(1000);
  expect(wideCode).toBeGreaterThan(1000);
  expect(differ).toBe(0);
  expect(fieldsDiffer).toBe(0);
});
