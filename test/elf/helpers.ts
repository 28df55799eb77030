/** Helpers shared by the randomizer tests. */
import * as fs from 'fs';
import * as path from 'path';
import { randomizeFile, readElf, readSymbols, sectionByName } from '../../elf';
import type { RandomizeResult } from '../../elf';
import { STT_FUNC, SHT_SYMTAB } from '../../elf/types';
import { runWith, type ZlibBuild } from './libs';

/** Names of the .text functions of a library, in address order. */
export function functionOrder(file: string): string[] {
  const elf = readElf(fs.readFileSync(file));
  const text = sectionByName(elf, '.text')!;
  const symtab = elf.sections.find((s) => s.sh_type === SHT_SYMTAB)!;
  const seen = new Set<number>();
  return readSymbols(elf, symtab)
    .filter((s) => s.type === STT_FUNC && s.st_shndx === text.index && s.st_size > 0)
    .sort((a, b) => a.st_value - b.st_value || a.name.localeCompare(b.name))
    .filter((s) => (seen.has(s.st_value) ? false : (seen.add(s.st_value), true)))
    .map((s) => s.name);
}

/** Randomizes `lib` with `seedHex` into `<outRoot>/<seedHex>/<basename>`; returns the directory. */
export function randomizeInto(lib: string, outRoot: string, seedHex: string): { dir: string; file: string; result: RandomizeResult } {
  const dir = path.join(outRoot, seedHex);
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, path.basename(lib));
  const result = randomizeFile(lib, file, Uint8Array.from(Buffer.from(seedHex, 'hex')));
  return { dir, file, result };
}

export const SEEDS = ['01', 'c0ffee', '5eed5eed5eed5eed'];

/**
 * zlib's own checks against the library in `dir` (a randomized image, or the original): `example`
 * passes and a `minigzip` round trip of `payload` gives it back byte for byte.
 */
export function expectZlibWorks(dir: string, z: ZlibBuild, payload: Buffer): void {
  const ex = runWith(dir, z.example, []);
  expect(ex.stdout).toContain('inflate with dictionary: hello, hello!');
  expect(ex.status).toBe(0);
  const input = path.join(dir, 'payload');
  fs.writeFileSync(input, payload);
  const gz = runWith(dir, z.minigzip, ['-c', input]);
  expect(gz.status).toBe(0);
  const gzFile = path.join(dir, 'payload.gz');
  fs.writeFileSync(gzFile, Buffer.from(gz.stdout, 'latin1'));
  const back = runWith(dir, z.minigzip, ['-d', '-c', gzFile]);
  expect(back.status).toBe(0);
  expect(Buffer.from(back.stdout, 'latin1').equals(payload)).toBe(true);
}
