/**
 * Fail open on a broken index while the view runs: index.sqlite overwritten with garbage
 * (again and again), then deleted, while real programs launch through the view with
 * their files in the flash store. No launch may fail; the view serves the real tree,
 * moves the bad index aside, continues with a fresh one and says so in its state file.
 * Run with FSCACHE_TEST_SESSION=libfuse2 for the other session.
 */
import Database from 'better-sqlite3';
import { execFileSync } from 'child_process';
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { defaultConfig } from '../core/config';
import { identityOf } from '../core/identity';
import { derivePaths } from '../core/paths';
import { Store } from '../fs/store/store';
import { runInChroot } from '../cli/demo';
import { StoreIndex } from '../fs/store/index-db';
import { silentLogger } from '../core/log';
import { createViewSandbox, fuseAvailable, ViewSandbox, waitFor } from './helpers/view-sandbox';
import { afterEachDispose } from './helpers/cleanup';

const skip = fuseAvailable();
const maybe = skip ? describe.skip : describe;
if (skip) console.warn(`index trouble tests skipped: ${skip}`);

const PROGRAMS: string[][] = [['/usr/bin/git', '--version'], ['/usr/bin/perl', '-e', '1'], ['/usr/bin/python3', '-c', 'pass']];

function dropCaches(): void {
  execFileSync('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches'], { timeout: 30000 });
}

/** Overwrites the file in place (same inode, as a bad write or a bit-rotten card would). */
function overwriteWithGarbage(file: string): void {
  const size = Math.max(fs.statSync(file).size, 64 * 1024);
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, randomBytes(size), 0, size, 0);
  } finally {
    fs.closeSync(fd);
  }
}

/** One write through a connection of its own, as the loader daemon makes; fails quietly on a broken index. */
function touchFromAnotherConnection(file: string): void {
  let db: Database.Database | undefined;
  try {
    db = new Database(file, { timeout: 1000 });
    db.prepare('INSERT OR REPLACE INTO hook_passthrough (key, source, reason, epoch, at) VALUES (?, ?, ?, ?, ?)').run('test', 'test', 'test', 'test', Date.now());
  } catch {
    // already garbage: the view's next flush finds it so
  } finally {
    db?.close();
  }
}

maybe('a broken index while the view runs', () => {
  let vs: ViewSandbox | undefined;
  afterEachDispose(() => vs, () => (vs = undefined));

  test('overwritten with garbage, then deleted, during launches: 0 failed launches, and the state names the rebuild', async () => {
    vs = createViewSandbox({ config: 'access_flush_ms = 200\n' });
    await vs.startView();
    const failed: string[] = [];
    let launches = 0;
    const round = async () => {
      for (const argv of PROGRAMS) {
        // Cold each time: the launch's files are read through the view, so through the index.
        dropCaches();
        const r = await runInChroot(vs!.sandbox, argv);
        launches++;
        if (r.code !== 0) failed.push(`${argv.join(' ')}: ${r.code} ${r.stderr.trim().split('\n').pop()}`);
      }
    };
    // Warm the store: the programs' files are copied to flash and then served from there.
    await round();
    const fills = () => vs!.view!.state()?.store?.fills ?? 0;
    expect(await waitFor(() => fills() >= 10, 30000, 200)).toBeGreaterThanOrEqual(0);
    await new Promise((r) => setTimeout(r, 1000));
    await round();
    expect(failed).toEqual([]);

    for (let i = 0; i < 15; i++) {
      if (fs.existsSync(vs.paths.index)) {
        // Another process writing the index (the loader daemon shares it) makes the view's
        // connection drop its page cache, so that it reads the garbage; then the garbage.
        touchFromAnotherConnection(vs.paths.index);
        overwriteWithGarbage(vs.paths.index);
      }
      await round();
    }
    expect(failed).toEqual([]);
    const afterGarbage = vs.view!.state()!.store!;
    expect(afterGarbage.indexRebuilds).toBeGreaterThanOrEqual(1);
    expect(afterGarbage.indexTrouble).toMatch(/overwritten|SQLITE_/);

    // Now deleted: the view notices at its next flush and makes a new one.
    await waitFor(() => fs.existsSync(vs!.paths.index), 2000, 50);
    fs.rmSync(vs.paths.index, { force: true });
    for (let i = 0; i < 13; i++) await round();

    expect({ launches, failed }).toEqual({ launches: 90, failed: [] });
    const state = vs.view!.state()!;
    expect(state.store!.indexRebuilds).toBeGreaterThan(afterGarbage.indexRebuilds);
    expect(state.store!.indexTrouble).toMatch(/is gone/);
    // The newest three broken indexes are kept for a look, no more (repeated trouble must not fill the flash).
    // (The deleted one left only its -wal and -shm to move.)
    const aside = new Set(fs.readdirSync(vs.paths.flash).map((n) => /^index\.sqlite\.corrupt-(\d+)/.exec(n)?.[1]).filter(Boolean));
    expect(aside.size).toBe(3);
    // The fresh index is in use: the copies made since are in it, and it reads as a database of ours.
    await new Promise((r) => setTimeout(r, 500));
    const index = StoreIndex.open(vs.paths.index, silentLogger, { readonly: true });
    try {
      expect(index.totals().entries).toBeGreaterThan(0);
    } finally {
      index.close();
    }
    expect(vs.view!.log()).not.toMatch(/request not handled|uncaught/i);
  });
});

/** The store's own reaction to an index that fails while serving, without a mount. */
describe('store with an index failing while serving', () => {
  let dir: string | undefined;
  afterEach(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });

  test('an SQLITE_CORRUPT answer serves no copy, then the index is moved aside and rebuilt, and copies come back', async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-ixtrouble-'));
    const root = path.join(dir, 'root');
    fs.mkdirSync(path.join(root, 'usr.real', 'lib'), { recursive: true });
    const config = defaultConfig();
    const paths = derivePaths(root, config);
    const rel = 'lib/liby.so';
    fs.writeFileSync(path.join(paths.realTree, rel), randomBytes(50000));
    Store.prepare(paths);
    const store = new Store(paths, StoreIndex.open(paths.index, silentLogger), config, silentLogger);
    expect(await store.fill(rel)).toBe(true);
    const identity = identityOf(fs.statSync(path.join(paths.realTree, rel), { bigint: true }));
    const fd = store.openCopy(rel, identity);
    expect(fd).toBeDefined();
    fs.closeSync(fd!);

    // What SQLite says when it reads a page of garbage.
    const index = (store as unknown as { index: StoreIndex }).index;
    index.get = () => {
      throw Object.assign(new Error('database disk image is malformed'), { code: 'SQLITE_CORRUPT' });
    };
    expect(store.openCopy(rel, identity)).toBeUndefined(); // the view serves the real file
    expect(store.has(rel)).toBe(false);
    await new Promise((r) => setImmediate(r));
    expect(store.counters).toMatchObject({ indexErrors: 1, indexRebuilds: 1 });
    expect(store.counters.indexTrouble).toMatch(/SQLITE_CORRUPT.*moved aside and rebuilt \(1 copies dropped\)/);
    expect(fs.readdirSync(paths.flash).filter((n) => /^index\.sqlite\.corrupt-\d+$/.test(n))).toHaveLength(1);
    // The fresh index takes new copies.
    expect(await store.fill(rel)).toBe(true);
    const again = store.openCopy(rel, identity);
    expect(again).toBeDefined();
    fs.closeSync(again!);
    await store.stop();
    store.close();
  });
});
