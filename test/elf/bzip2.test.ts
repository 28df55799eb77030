/**
 * bzip2 1.0.8 from Debian's source package, randomized; its own `make test` checks (compress the
 * three sample files at -1/-2/-3 and compare with the shipped .bz2 files, decompress the shipped
 * files and compare with the references) run against each randomized libbz2.so.1.0.
 */
import * as fs from 'fs';
import * as path from 'path';
import { functionOrder, randomizeInto, SEEDS } from './helpers';
import { announceSkip, buildBzip2, runWith, tempDir } from './libs';

const bz = buildBzip2();
if (!bz.ok) announceSkip('bzip2 tests', bz.skip);

(bz.ok ? describe : describe.skip)('randomized bzip2', () => {
  if (!bz.ok) return;
  const out = tempDir('bzip2');

  /** bzip2's `make test`, against the library in `dir`. */
  function selfTest(dir: string): string[] {
    const failures: string[] = [];
    for (const [n, level] of [[1, '-1'], [2, '-2'], [3, '-3']] as const) {
      const ref = fs.readFileSync(path.join(bz.src, `sample${n}.ref`));
      const bz2 = fs.readFileSync(path.join(bz.src, `sample${n}.bz2`));
      const c = runWith(dir, bz.bzip2, [level, '-c'], ref);
      if (c.status !== 0 || !Buffer.from(c.stdout, 'latin1').equals(bz2)) failures.push(`compress sample${n}`);
      const d = runWith(dir, bz.bzip2, ['-d', '-c'], bz2);
      if (d.status !== 0 || !Buffer.from(d.stdout, 'latin1').equals(ref)) failures.push(`decompress sample${n}`);
    }
    return failures;
  }

  test('baseline passes its own test', () => {
    expect(selfTest(bz.dir)).toEqual([]);
  });

  test.each(SEEDS)('seed %s: bzip2 test passes on the randomized library', (seed) => {
    const { dir, file } = randomizeInto(bz.lib, out, seed);
    expect(selfTest(dir)).toEqual([]);
    expect(functionOrder(file)).not.toEqual(functionOrder(bz.lib));
  });
});
