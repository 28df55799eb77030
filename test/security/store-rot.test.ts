/**
 * Store integrity on flash that rots (issue 14, finding 7, the store's half; the index/store
 * half of 8), on real views over sandbox roots: a copy whose bytes rotted, or reached through
 * a store directory swapped for a symlink, is not served; the index is 0600 and the store 0700.
 * Reading the view is done as nobody where a user would (the served bytes are the real ones).
 * Images on rotting flash: image-rot.test.ts.
 */
import { spawnSync } from 'child_process';
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { StoreIndex } from '../../fs/store/index-db';
import { silentLogger } from '../../core/log';
import { createViewSandbox, fuseAvailable, indexEntry, restartView, ViewSandbox, waitFor, waitForFills, writeReal } from '../helpers/view-sandbox';
import { sha } from '../helpers/hash';
import { afterEachDispose } from '../helpers/cleanup';

const skip = fuseAvailable();
const maybe = skip ? describe.skip : describe;
if (skip) console.warn(`store rot tests skipped: ${skip}`);


/** The sha256 of a file read through the view by nobody (bounded: a hung view fails the test, dispose ends it). */
function shaAsNobody(vs: ViewSandbox, rel: string): string {
  fs.chmodSync(vs.sandbox.root, 0o755); // mkdtemp's 0700 would keep nobody out of R
  const file = vs.inView(rel);
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'sha256sum', file], { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`sha256sum as nobody: ${r.status} ${r.stderr}`);
  return r.stdout.split(' ')[0];
}

maybe('store rot', () => {
  let vs: ViewSandbox | undefined;
  afterEachDispose(() => vs, () => (vs = undefined));

  test('a byte flipped in a copy on flash: the next view serves the real bytes, drops the copy and counts it', async () => {
    vs = createViewSandbox({ copy: true, config: 'access_flush_ms = 100\n' });
    const rel = 'lib/librot.so.1';
    const content = randomBytes(5 * 1024 * 1024);
    writeReal(vs, rel, content);
    await vs.startView();
    fs.readFileSync(vs.inView(rel));
    await waitForFills(vs.view!, 1);
    await vs.view!.stop(10000);
    vs.view = undefined;

    // What a worn SD card does: one byte of the copy changes; size, row and real file stay.
    const copy = path.join(vs.paths.store, rel);
    const fd = fs.openSync(copy, 'r+');
    fs.writeSync(fd, Buffer.from([content[4242] ^ 0x5a]), 0, 1, 4242);
    fs.closeSync(fd);

    await vs.startView();
    expect(shaAsNobody(vs, rel)).toBe(sha(content));
    const ms = await waitFor(() => (vs!.view!.state()?.store?.corruptFound ?? 0) >= 1, 3000, 50);
    expect(ms).toBeGreaterThanOrEqual(0);
    const store = vs.view!.state()!.store!;
    expect(store.lastCorrupt).toMatch(/lib\/librot\.so\.1 differs from the hash taken when it was filled/);
    // The cost of the check, once per copy per view process (reported, never asserted as a time).
    console.log(`integrity check of a 5 MiB copy: ${store.checkMs.toFixed(1)} ms for ${store.copiesChecked} copies`);
    expect(store.copiesChecked).toBe(1);
    // The rotten copy is gone; a fresh one is made from the real file and passes its check in the next process.
    await waitForFills(vs.view!, 1);
    expect(fs.readFileSync(copy).equals(content)).toBe(true);
    await restartView(vs);
    expect(sha(fs.readFileSync(vs.inView(rel)))).toBe(sha(content));
    await waitFor(() => (vs!.view!.state()?.store?.copiesChecked ?? 0) >= 1, 3000, 50);
    expect(vs.view!.state()!.store).toMatchObject({ copiesChecked: 1, corruptFound: 0 });
    expect(vs.view!.state()!.view.hits).toBeGreaterThanOrEqual(1);
  });

  test('a store directory swapped for a symlink to a decoy is not served, and the decoy is not removed', async () => {
    vs = createViewSandbox({ copy: true, config: 'access_flush_ms = 100\n' });
    const rel = 'lib/deep/libdecoy.so.1';
    const content = randomBytes(100000);
    writeReal(vs, rel, content);
    await vs.startView();
    fs.readFileSync(vs.inView(rel));
    await waitForFills(vs.view!, 1);
    await restartView(vs);

    // While the view runs (after its recovery at start): lib/deep becomes a symlink to a tree of other bytes.
    const decoy = path.join(vs.sandbox.root, 'decoy');
    fs.mkdirSync(decoy);
    const planted = randomBytes(content.length);
    fs.writeFileSync(path.join(decoy, 'libdecoy.so.1'), planted);
    const storeDir = path.join(vs.paths.store, 'lib', 'deep');
    fs.renameSync(storeDir, `${storeDir}.aside`);
    fs.symlinkSync(decoy, storeDir);

    expect(shaAsNobody(vs, rel)).toBe(sha(content));
    expect(await waitFor(() => (vs!.view!.state()?.store?.corruptFound ?? 0) >= 1, 3000, 50)).toBeGreaterThanOrEqual(0);
    const state = vs.view!.state()!;
    expect(state.store!.lastCorrupt).toMatch(/libdecoy\.so\.1 resolves to .*decoy\/libdecoy\.so\.1, outside the store/);
    expect(fs.readFileSync(path.join(decoy, 'libdecoy.so.1')).equals(planted)).toBe(true);
    expect(indexEntry(vs, rel)?.hash).not.toBe(sha(planted));
  });

  test('the index is 0600 (with its -wal and -shm), the store 0700, R/fscache 0711; modes of older installs are fixed at start', async () => {
    vs = createViewSandbox({ copy: true, config: 'access_flush_ms = 100\n' });
    const { paths } = vs;
    const mode = (f: string) => fs.statSync(f).mode & 0o777;
    // An install from before: everything readable by all.
    fs.mkdirSync(paths.storePartial, { recursive: true });
    for (const d of [paths.flash, paths.store, paths.storePartial]) fs.chmodSync(d, 0o755);
    StoreIndex.open(paths.index, silentLogger).close();
    fs.chmodSync(paths.index, 0o644);
    writeReal(vs, 'lib/libmodes.so', randomBytes(10000));
    await vs.startView();
    fs.readFileSync(vs.inView('lib/libmodes.so'));
    await waitForFills(vs.view!, 1);
    expect(mode(paths.flash)).toBe(0o711);
    expect(mode(paths.store)).toBe(0o700);
    expect(mode(paths.storePartial)).toBe(0o700);
    for (const suffix of ['', '-wal', '-shm']) expect([suffix, mode(paths.index + suffix)]).toEqual([suffix, 0o600]);
  });
});
