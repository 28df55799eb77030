/**
 * Handles the view holds for the kernel's nodes (until FORGET): a copy evicted while a
 * node reads it does not keep its flash space, because the handle moves to the real
 * file when that is the same version; the bytes read stay the file's.
 * Run with FSCACHE_TEST_SESSION=libfuse2 for the other session.
 */
import { execFileSync } from 'child_process';
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { createViewSandbox, fuseAvailable, ViewSandbox, waitForFills } from './helpers/view-sandbox';
import { sha } from './helpers/hash';

const skip = fuseAvailable();
const maybe = skip ? describe.skip : describe;
if (skip) console.warn(`node handle tests skipped: ${skip}`);


/** The store files (deleted or not) the view process has open. */
function storeFilesOpen(vs: ViewSandbox): string[] {
  const dir = `/proc/${vs.view!.child.pid}/fd`;
  const out: string[] = [];
  for (const fd of fs.readdirSync(dir)) {
    try {
      const target = fs.readlinkSync(path.join(dir, fd));
      if (target.startsWith(vs.paths.store + '/')) out.push(target);
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

maybe('handles held for kernel nodes', () => {
  let vs: ViewSandbox | undefined;
  let held: number | undefined;
  afterEach(async () => {
    if (held !== undefined) fs.closeSync(held);
    held = undefined;
    await vs?.dispose();
    vs = undefined;
  });

  test('a copy evicted while a node reads it: the handle moves to the real file, the flash space is freed', async () => {
    vs = createViewSandbox({ copy: true, config: 'quota = 1M\naccess_flush_ms = 100\n' });
    const a = randomBytes(300 * 1024);
    const b = randomBytes(300 * 1024);
    const big = randomBytes(1000 * 1024);
    for (const [rel, content] of [['lib/liba.so', a], ['lib/libb.so', b], ['lib/libbig.so', big]] as const) {
      fs.mkdirSync(path.join(vs.paths.realTree, 'lib'), { recursive: true });
      fs.writeFileSync(path.join(vs.paths.realTree, rel), content);
    }
    await vs.startView();
    fs.readFileSync(vs.inView('lib/liba.so'));
    await waitForFills(vs.view!, 1);
    fs.readFileSync(vs.inView('lib/libb.so'));
    await waitForFills(vs.view!, 2);
    // The kernel forgets liba's node; a new one reads from the copy, and this descriptor keeps the node.
    execFileSync('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);
    held = fs.openSync(vs.inView('lib/liba.so'), 'r');
    const head = Buffer.alloc(4096);
    expect(fs.readSync(held, head, 0, head.length, 0)).toBe(head.length);
    expect(storeFilesOpen(vs)).toEqual([path.join(vs.paths.store, 'lib/liba.so')]);

    // A file needing the whole quota evicts both copies, liba's (in use) too.
    fs.readFileSync(vs.inView('lib/libbig.so'));
    await waitForFills(vs.view!, 3);
    expect(fs.existsSync(path.join(vs.paths.store, 'lib/liba.so'))).toBe(false);
    expect(storeFilesOpen(vs).filter((f) => f.includes('liba.so'))).toEqual([]);
    // The rest of liba, read through the same open file after the drop, is liba's.
    execFileSync('sh', ['-c', 'echo 1 > /proc/sys/vm/drop_caches']);
    const rest = Buffer.alloc(a.length - head.length);
    expect(fs.readSync(held, rest, 0, rest.length, head.length)).toBe(rest.length);
    expect(sha(Buffer.concat([head, rest]))).toBe(sha(a));
  });
});
