/**
 * The `randomize` and `inspect` verbs. Thin: parse arguments, call elf/, print one line.
 * Exit codes are decided by the CLI main through `exitCodeFor`: refusals and malformed input
 * are "refused" (3).
 */
import { Command, InvalidArgumentError } from 'commander';
import { ElfFormatError, ElfRefusal } from '../elf/errors';

// The randomizer (and iced-x86's wasm decoder, ~0.3 s to load) is loaded only by these verbs.
const elf = () => import('../elf');

export const EXIT_REFUSED = 3;

/** 3 for a refusal or a malformed ELF file, undefined for anything this module does not own. */
export function exitCodeFor(err: unknown): number | undefined {
  if (err instanceof ElfRefusal || err instanceof ElfFormatError) return EXIT_REFUSED;
  return undefined;
}

export function registerElfVerbs(program: Command): void {
  program
    .command('randomize')
    .description('write a copy of an x86-64 shared library with its functions in a random, verified order')
    .argument('<in>', 'input shared library (linked with -Wl,--emit-relocs, built with -ffunction-sections)')
    .argument('<out>', 'output path (written atomically; nothing is written on refusal)')
    .option('--seed <hex>', 'seed in hex (default: 32 random bytes); same input and seed give the same bytes')
    .option('--verify <mode>', "'decode': iced-x86 decodes the output code (default); 'fields': checks it at the input's instruction boundaries (faster)", 'decode')
    .action(async (inPath: string, outPath: string, opts: { seed?: string; verify: string }) => {
      if (opts.verify !== 'decode' && opts.verify !== 'fields') throw new InvalidArgumentError(`--verify must be 'decode' or 'fields'`);
      const { parseSeed, randomizeFile, unmovedNote } = await elf();
      let seed: Uint8Array | undefined;
      try {
        seed = opts.seed !== undefined ? parseSeed(opts.seed) : undefined;
      } catch (e) {
        throw new InvalidArgumentError((e as Error).message); // usage error: the CLI main's exit 2
      }
      const r = randomizeFile(inPath, outPath, seed, { verify: opts.verify });
      const ms = Object.values(r.timingsMs).reduce((a, b) => a + b, 0);
      const unmoved = unmovedNote(r.layout);
      process.stdout.write(
        `randomized ${inPath} -> ${outPath}: ${r.units} units, ${r.entropyBits.toFixed(0)} bits, ` +
        `${r.verify.pcRelOperands} operands verified` +
        (unmoved ? `, ${unmoved}` : '') +
        (r.write.droppedSections.some((n) => n.startsWith('.debug_')) ? ', debug info stripped' : '') +
        (r.write.buildIdReplaced ? ', build-id replaced' : '') + `, ${ms.toFixed(0)} ms` +
        (opts.seed === undefined ? `, seed ${Buffer.from(r.seed).toString('hex')}` : '') + '\n',
      );
    });
  program
    .command('inspect')
    .description('say whether a library can be randomized, and if not, why')
    .argument('<lib>', 'shared library')
    .option('--json', 'machine-readable output')
    .action(async (lib: string, opts: { json?: boolean }) => {
      const { inspectBytes, readRegularFile } = await elf();
      const rep = inspectBytes(readRegularFile(lib).bytes); // a FIFO or device is refused, not read
      if (opts.json) {
        process.stdout.write(JSON.stringify({ path: lib, ...rep }, null, 2) + '\n');
      } else if (rep.randomizable) {
        process.stdout.write(
          `${lib}: randomizable: ${rep.units} units (${rep.joinedSymbols} symbols kept with a neighbour), ` +
          `${rep.entropyBits} bits of entropy, ${rep.textBytes} bytes of .text; touches ${rep.sectionsTouched!.join(' ')}\n`,
        );
      } else {
        process.stdout.write(`${lib}: not randomizable: ${rep.reason}\n`);
      }
      // Not randomizable is an answer, not an error: exit 0 unless --json consumers want otherwise.
    });
}
