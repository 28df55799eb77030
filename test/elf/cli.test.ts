/** The `randomize` and `inspect` verbs through commander, and the exit-code mapping. */
import { Command } from 'commander';
import * as fs from 'fs';
import * as path from 'path';
import { exitCodeFor, registerElfVerbs } from '../../cli/elf-verbs';
import { ElfFormatError, ElfRefusal } from '../../elf';
import { announceSkip, buildCxx, tempDir } from './libs';

async function run(args: string[]): Promise<{ out: string; err: unknown }> {
  const program = new Command().exitOverride();
  registerElfVerbs(program);
  let out = '';
  const spy = jest.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => { out += String(s); return true; });
  let err: unknown;
  try {
    await program.parseAsync(['node', 'fscache', ...args]);
  } catch (e) {
    err = e;
  } finally {
    spy.mockRestore();
  }
  return { out, err };
}

test('exitCodeFor maps refusals and format errors to 3, and nothing else', () => {
  expect(exitCodeFor(new ElfRefusal('x'))).toBe(3);
  expect(exitCodeFor(new ElfFormatError(0, 'x'))).toBe(3);
  expect(exitCodeFor(new Error('x'))).toBeUndefined();
});

test('inspect of a host library says why not', async () => {
  const r = await run(['inspect', '/usr/lib/x86_64-linux-gnu/libz.so.1']);
  expect(r.out).toMatch(/not randomizable: no static relocations/);
  const j = await run(['inspect', '/usr/lib/x86_64-linux-gnu/libz.so.1', '--json']);
  expect(JSON.parse(j.out)).toMatchObject({ randomizable: false });
});

test('randomize of a host library refuses with exit code 3 and writes nothing', async () => {
  const dir = tempDir('cli-refuse');
  const r = await run(['randomize', '/usr/lib/x86_64-linux-gnu/libz.so.1', path.join(dir, 'libz.so.1')]);
  expect(exitCodeFor(r.err)).toBe(3);
  expect(fs.readdirSync(dir)).toEqual([]);
});

test('a bad seed is a usage error (not a refusal), and writes nothing', async () => {
  const r = await run(['randomize', '/dev/null', '/tmp/fscache-never-written', '--seed', 'xyz']);
  expect(r.err).toBeDefined();
  expect((r.err as Error).message).toMatch(/bad seed/);
  expect(exitCodeFor(r.err)).toBeUndefined();
  expect(fs.existsSync('/tmp/fscache-never-written')).toBe(false);
});

const cxx = buildCxx();
if (!cxx.ok) announceSkip('CLI randomize test', cxx.skip);
(cxx.ok ? test : test.skip)('randomize and inspect a randomizable library', async () => {
  if (!cxx.ok) return;
  const dir = tempDir('cli');
  const out = path.join(dir, 'libthrower.so');
  const r = await run(['randomize', cxx.lib, out, '--seed', '00ff']);
  expect(r.err).toBeUndefined();
  expect(r.out).toMatch(/randomized .* units, \d+ bits/);
  const again = path.join(dir, 'again.so');
  await run(['randomize', cxx.lib, again, '--seed', '00ff', '--verify', 'fields']);
  expect(fs.readFileSync(out).equals(fs.readFileSync(again))).toBe(true);
  const bad = await run(['randomize', cxx.lib, path.join(dir, 'bad.so'), '--verify', 'maybe']);
  expect(bad.err).toBeDefined();
  expect(exitCodeFor(bad.err)).toBeUndefined(); // a usage error: the CLI main's business (exit 2)
  expect(fs.existsSync(path.join(dir, 'bad.so'))).toBe(false);
  const j = await run(['inspect', cxx.lib, '--json']);
  const rep = JSON.parse(j.out);
  expect(rep.randomizable).toBe(true);
  expect(rep.units).toBeGreaterThan(10);
  expect(rep.entropyBits).toBeGreaterThan(20);
});
