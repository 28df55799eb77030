/**
 * The `randomize` and `inspect` verbs. Thin: parse arguments, call elf/, print one line.
 * Exit codes are decided by the CLI main through `exitCodeFor`: refusals and malformed input
 * are "refused" (3).
 */
import { Command, InvalidArgumentError } from 'commander';
import { ElfFormatError, ElfRefusal } from '../elf/errors';
import type { Paths } from '../core/paths';

// The randomizer (and iced-x86's wasm decoder, ~0.3 s to load) is loaded only by these verbs.
const elf = () => import('../elf');

export const EXIT_REFUSED = 3;

/** 3 for a refusal or a malformed ELF file, undefined for anything this module does not own. */
export function exitCodeFor(err: unknown): number | undefined {
  if (err instanceof ElfRefusal || err instanceof ElfFormatError) return EXIT_REFUSED;
  return undefined;
}

/** `paths`: the root's paths, for `inspect --installed` (resolved only when asked). */
export function registerElfVerbs(program: Command, paths?: () => Paths): void {
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
    .description('say whether libraries can be randomized, and if not, why and what to do (rebuild with the flags, do not strip)')
    .argument('[libs...]', 'shared libraries')
    .option('--installed', "every shared library under the real tree, grouped by the package that owns it (dpkg, Portage's qfile, opkg)")
    .option('--json', 'machine-readable output')
    .addHelpText('after', '\nNot randomizable is an answer (exit 0); a named file that cannot be read is exit 2, after the others are reported.')
    .action(async (libs: string[], opts: { json?: boolean; installed?: boolean }) => {
      const { inspectVerb } = await import('./inspect');
      if (opts.installed && !paths) throw new InvalidArgumentError('--installed needs the root (run through the fscache command)');
      await inspectVerb(libs, opts, () => paths!());
    });
}
