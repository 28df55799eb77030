/**
 * Long fuzz run of the randomizer (the test suite runs a few thousand inputs; this runs many more):
 *
 *   npx tsc -p . && node dist/bench/fuzz-randomizer.js [--runs 100000] [--seed N]
 *
 * Inputs are mutations (truncation, bit flips, crafted header/section/segment fields, byte
 * splices) of the small randomizable fixture library and of this machine's libz.so.1. Every input
 * must end as a verified image or an ElfRefusal/ElfFormatError; anything else (another exception,
 * an input taking more than 5 s) is reported with the counterexample and exits 1.
 */
import fc from 'fast-check';
import * as fs from 'fs';
import { ElfFormatError, ElfRefusal, inspectBytes, randomizeBytes } from '../elf';
import { buildSmall } from '../test/elf/libs';
import { applyMutation, mutationArb } from '../test/elf/mutate';

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
}

function main(): void {
  const runs = arg('--runs', 100000);
  const seed = arg('--seed', 20261124);
  const small = buildSmall();
  if (!small.ok) throw new Error(small.skip);
  const corpora = [fs.readFileSync(small.lib), fs.readFileSync('/usr/lib/x86_64-linux-gnu/libz.so.1')];
  const counts = { ok: 0, refused: 0, slowest: 0 };
  const reasons = new Map<string, number>();
  const t0 = Date.now();
  fc.assert(
    // One input in four mutates the host library, the rest the randomizable fixture.
    fc.property(fc.nat({ max: 0xffff }).chain((n) => fc.tuple(fc.constant(n), mutationArb(corpora[n % 4 === 3 ? 1 : 0].length))), ([n, m]) => {
      const input = applyMutation(corpora[n % 4 === 3 ? 1 : 0], m);
      const s = Date.now();
      try {
        inspectBytes(input);
        randomizeBytes(input, Buffer.from([n & 0xff, n >> 8]));
        counts.ok++;
      } catch (e) {
        if (!(e instanceof ElfRefusal || e instanceof ElfFormatError)) throw e;
        counts.refused++;
        const r = (e instanceof ElfRefusal ? e.reason : e.msg).replace(/0x[0-9a-f]+/g, 'X').slice(0, 80);
        reasons.set(r, (reasons.get(r) ?? 0) + 1);
      } finally {
        const d = Date.now() - s;
        counts.slowest = Math.max(counts.slowest, d);
        if (d > 5000) throw new Error(`input took ${d} ms`);
      }
    }),
    { numRuns: runs, seed },
  );
  const secs = (Date.now() - t0) / 1000;
  process.stdout.write(`${runs} inputs in ${secs.toFixed(0)} s: ${counts.ok} randomized and verified, ${counts.refused} refused, ` +
    `0 crashes, 0 hangs, slowest input ${counts.slowest} ms\nTop refusal reasons:\n` +
    [...reasons].sort((a, b) => b[1] - a[1]).slice(0, 12).map(([r, n]) => `- ${n} × ${r}`).join('\n') + '\n');
}

main();
