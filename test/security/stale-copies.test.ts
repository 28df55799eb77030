/**
 * Stale copies (issue 14, finding 6), on real views over sandbox roots: a same-size rewrite
 * within the second of a fill (1-second timestamps, or an mtime restored) never leaves the old
 * copy served; `fscache verify` compares contents; a file changed through another hard link
 * (in another watched directory, or outside the real tree, mtime restored) is seen through
 * every name within a second. These are not a user's attack (only root writes the real
 * tree), so they run as root. Store rot (finding 7) is in store-rot.test.ts.
 */
import { execFileSync, spawnSync } from 'child_process';
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { CLI_ENTRY } from '../../core/package-root';
import { createViewSandbox, fuseAvailable, indexEntry, restartView, ViewSandbox, waitFor, waitForFills, writeReal } from '../helpers/view-sandbox';
import { sha } from '../helpers/hash';
import { afterEachDispose } from '../helpers/cleanup';

const skip = fuseAvailable();
const maybe = skip ? describe.skip : describe;
if (skip) console.warn(`stale-copy tests skipped: ${skip}`);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Rewrites `file` in place (same inode, same size) and puts its mtime back as it was, as `touch -d` does. */
function rewriteInPlace(file: string, content: Buffer): void {
  const { mtime } = fs.statSync(file);
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, content, 0, content.length, 0);
  fs.closeSync(fd);
  execFileSync('touch', ['-m', '-d', `@${(mtime.getTime() / 1000).toFixed(3)}`, file]);
}

function cli(root: string, args: string[]) {
  return spawnSync(process.execPath, [CLI_ENTRY, '--root', root, ...args], { encoding: 'utf8', timeout: 60000 });
}

maybe('stale copies', () => {
  let vs: ViewSandbox | undefined;
  afterEachDispose(() => vs, () => (vs = undefined));

  test('a same-size rewrite with its mtime restored: verify reports the copy stale by contents, the view serves the new bytes', async () => {
    vs = createViewSandbox({ copy: true, config: 'access_flush_ms = 100\n' });
    const rel = 'lib/librestored.so.1';
    const v1 = randomBytes(64 * 1024);
    const file = writeReal(vs, rel, v1);
    // A whole-second mtime, as package files carry (and as a coarse file system gives every file).
    execFileSync('touch', ['-m', '-d', '@1764892800', file]);
    await vs.startView();
    fs.readFileSync(vs.inView(rel));
    await waitForFills(vs.view!, 1);
    await vs.view!.stop(10000);
    vs.view = undefined;

    const v2 = randomBytes(v1.length);
    const before = fs.statSync(file, { bigint: true });
    rewriteInPlace(file, v2);
    const after = fs.statSync(file, { bigint: true });
    // The identity the old code compared is unchanged: same device, inode, size and mtime.
    expect([after.dev, after.ino, after.size, after.mtimeNs]).toEqual([before.dev, before.ino, before.size, before.mtimeNs]);

    const r = cli(vs.sandbox.root, ['verify', '--json']);
    expect(r.status).toBe(4);
    expect(JSON.parse(r.stdout)).toMatchObject({ checked: 1, good: 0, corrupt: [], stale: [rel] });

    await vs.startView();
    expect(sha(fs.readFileSync(vs.inView(rel)))).toBe(sha(v2));
    expect(await waitFor(() => (vs!.view!.state()?.store?.staleFound ?? 0) >= 1, 3000, 50)).toBeGreaterThanOrEqual(0);
  });

  test('1-second timestamps: a same-size rewrite within the second of a fill is never served from the old copy', async () => {
    // No watcher: the identity checked at each open is what keeps copies fresh; the watcher only makes it sooner.
    vs = createViewSandbox({ copy: true, config: 'access_flush_ms = 100\nwatch = off\n' });
    // The real tree on ext4 with 128-byte inodes: whole-second mtime and ctime, as on older flash file systems.
    const image = path.join(vs.sandbox.root, 'coarse.img');
    execFileSync('truncate', ['-s', '16M', image]);
    execFileSync('mkfs.ext4', ['-q', '-I', '128', image], { stdio: 'ignore' });
    execFileSync('mount', ['-o', 'loop', image, vs.paths.realTree]);
    fs.mkdirSync(path.join(vs.paths.realTree, 'lib'));
    await vs.startView();

    let rel = '';
    let v2 = Buffer.alloc(0);
    for (let attempt = 0; attempt < 5 && !rel; attempt++) {
      // Start just after a second begins, so that fill and rewrite fall within it.
      await sleep(1020 - (Date.now() % 1000));
      const name = `lib/libcoarse${attempt}.so`;
      const v1 = randomBytes(256 * 1024);
      const file = writeReal(vs, name, v1);
      const stamped = fs.statSync(file, { bigint: true });
      expect(stamped.mtimeNs % 1000000000n).toBe(0n);
      expect(fs.readFileSync(vs.inView(name)).equals(v1)).toBe(true); // starts the fill of v1
      await sleep(300); // the fill has read v1 by now (the old code had also indexed it)
      v2 = randomBytes(v1.length);
      rewriteInPlace(file, v2);
      const now = fs.statSync(file, { bigint: true });
      // Only meaningful if the rewrite left no trace in the timestamps (same second); else try again.
      if (now.mtimeNs === stamped.mtimeNs && now.ctimeNs === stamped.ctimeNs) rel = name;
    }
    expect(rel).not.toBe('');
    await sleep(1500); // the fill's second has passed: it was read again and refused
    const entry = indexEntry(vs, rel);
    expect(entry === undefined || entry.hash === sha(v2)).toBe(true);
    expect(vs.view!.log()).toMatch(new RegExp(`${rel} changed within its timestamps' second while being copied; not stored`));

    // A fresh view process (no kernel page cache of v1): the new bytes, from flash or the real file.
    await restartView(vs);
    expect(sha(fs.readFileSync(vs.inView(rel)))).toBe(sha(v2));
    await waitForFills(vs.view!, 1);
    await restartView(vs);
    expect(sha(fs.readFileSync(vs.inView(rel)))).toBe(sha(v2));
  });

  // libfuse2 keeps a path's cached pages across opens while its size and mtime are unchanged, and
  // cannot be told otherwise: there a change to an opened file renews the view, which only a
  // supervisor can do (test/packages.test.ts runs that under libfuse2); this view runs by hand.
  const libfuse2 = process.env.FSCACHE_TEST_SESSION === 'libfuse2';
  if (libfuse2) console.warn('SKIP under libfuse2: a file changed in place with size and mtime kept is seen through a renewed view, which needs the supervisor (test/packages.test.ts)');
  (libfuse2 ? test.skip : test)('a file changed through another hard link (another watched directory, or outside the real tree, mtime restored) is seen through every name within a second', async () => {
    vs = createViewSandbox({ copy: true, config: 'access_flush_ms = 100\n' });
    const v1 = randomBytes(64 * 1024);
    const a = writeReal(vs, 'lib/libhl.so.1', v1);
    // Names of the same file: in another directory of the real tree, and outside it (nothing watches that one).
    const b = path.join(vs.paths.realTree, 'share', 'hl', 'libhl.so.1');
    fs.mkdirSync(path.dirname(b), { recursive: true });
    fs.linkSync(a, b);
    const outside = path.join(vs.sandbox.root, 'elsewhere', 'libhl.so.1');
    fs.mkdirSync(path.dirname(outside));
    fs.linkSync(a, outside);
    await vs.startView();
    const viaA = () => sha(fs.readFileSync(vs!.inView('lib/libhl.so.1')));
    const viaB = () => sha(fs.readFileSync(vs!.inView('share/hl/libhl.so.1')));
    // Read, stat and filled: vouched memory, the kernel's caches and the flash copy all hold v1.
    expect([viaA(), viaB()]).toEqual([sha(v1), sha(v1)]);
    fs.statSync(vs.inView('lib/libhl.so.1'));
    await waitForFills(vs.view!, 1);
    expect(viaA()).toBe(sha(v1));

    const within = async (what: string, want: string) => {
      const ms = await waitFor(() => viaA() === want && viaB() === want, 1500, 20);
      expect({ what, seen: ms >= 0 && ms <= 1050 }).toEqual({ what, seen: true });
    };
    // Through the name outside the real tree, same size, mtime put back: no directory watch sees it.
    const v2 = randomBytes(v1.length);
    rewriteInPlace(outside, v2);
    await within('written through a name outside the real tree', sha(v2));
    // Through the other name in the real tree: its directory's event must reach lib/libhl.so.1 too.
    const v3 = randomBytes(v1.length);
    rewriteInPlace(b, v3);
    await within('written through another name in the real tree', sha(v3));
    // A fresh view process (no page cache, no memory): still the new bytes, from flash or the real file.
    await restartView(vs);
    expect([viaA(), viaB()]).toEqual([sha(v3), sha(v3)]);
  });
});
