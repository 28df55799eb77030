/** Config parsing and the SQLite index: pure units, no mounts. */
import Database from 'better-sqlite3';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { defaultConfig, parseConfig, renderDefaultConfig } from '../core/config';
import { compileGlobs } from '../core/glob';
import { SCHEMA_VERSION, StoreIndex } from '../fs/store/index-db';
import { silentLogger } from '../core/log';

describe('config', () => {
  test('defaults, comments and sizes', () => {
    const c = parseConfig('# a comment\nquota = 512M  # trailing\nmode = view\n\nfill = *.so, bin/*\n', 'f');
    expect(c.quotaBytes).toBe(512 * 1024 * 1024);
    expect(c.fillGlobs).toEqual(['*.so', 'bin/*']);
    expect(c.attrTimeout).toBe(defaultConfig().attrTimeout);
  });

  test('an unknown key is an error naming the key, the line and the known keys', () => {
    expect(() => parseConfig('quota = 1G\nqouta = 2G\n', '/etc/fscache.conf')).toThrow(
      /\/etc\/fscache.conf:2: unknown key 'qouta': known keys: mode, .*real_tree, .*quota/,
    );
  });

  test.each([
    ['mode = fast', /bad value 'fast' for mode: allowed: view, mirror/],
    ['quota = lots', /bad value 'lots' for quota: allowed: a size in bytes/],
    ['real_tree = ../etc', /bad value '..\/etc' for real_tree: allowed: a path relative to the root, without \.\./],
    ['attr_timeout = -1', /attr_timeout: allowed: whole seconds from 0 to 86400/],
    ['fill_concurrency = 99', /fill_concurrency: allowed: an integer from 1 to 16/],
    ['quota', /expected 'key = value'/],
    ['mode = view\nmode = mirror', /mode is set twice/],
  ])('%s is refused with the allowed values', (text, message) => {
    expect(() => parseConfig(text, 'f')).toThrow(message);
  });

  test('the rendered default file documents every key and parses back to the defaults', () => {
    const text = renderDefaultConfig();
    const uncommented = text.split('\n').filter((l) => /^#\w+ = /.test(l)).map((l) => l.slice(1)).join('\n');
    expect(parseConfig(uncommented, 'rendered')).toEqual(defaultConfig());
    expect(text).toMatch(/# allowed: view, mirror\n#mode = view/);
  });

  test('fill globs: names, paths and **', () => {
    const m = compileGlobs(defaultConfig().fillGlobs);
    expect(m('lib/x86_64-linux-gnu/libc.so.6')).toBe(true);
    expect(m('lib/python3.11/lib-dynload/zlib.cpython-311-x86_64-linux-gnu.so')).toBe(true);
    expect(m('bin/perl')).toBe(true);
    expect(m('libexec/git-core/git')).toBe(true);
    expect(m('share/doc/README')).toBe(false);
    expect(m('lib/python3.11/json/__init__.py')).toBe(false);
    expect(compileGlobs(['lib/**/*.py'])('lib/python3.11/json/__init__.py')).toBe(true);
    expect(compileGlobs(['lib/**/*.py'])('lib/x.py')).toBe(true);
  });
});

describe('index', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-index-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const entry = (p: string, lastAccess: number) => ({
    path: p, dev: 1n, ino: 2n, size: 10n, mtimeNs: 1700000000123456789n, hash: 'ab', filledAt: 1, lastAccess, hits: 0,
  });

  test('WAL mode, current schema version, nanosecond mtimes kept exactly', () => {
    const file = path.join(dir, 'index.sqlite');
    const ix = StoreIndex.open(file, silentLogger);
    ix.put(entry('lib/a.so', 5));
    expect(ix.get('lib/a.so')!.mtimeNs).toBe(1700000000123456789n);
    ix.close();
    const db = new Database(file, { readonly: true });
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(db.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
    db.close();
  });

  test('an index of version 0 (empty file) is migrated; a newer one is moved aside', () => {
    const file = path.join(dir, 'index.sqlite');
    new Database(file).close();
    StoreIndex.open(file, silentLogger).close();
    const db = new Database(file);
    db.pragma('user_version = 99');
    db.close();
    const warnings: string[] = [];
    const ix = StoreIndex.open(file, { ...silentLogger, warn: (m) => warnings.push(m) });
    expect(warnings.join()).toMatch(/schema version 99 is newer/);
    expect(ix.totals().entries).toBe(0);
    ix.close();
  });

  test('access times and hits are written in batches, and LRU order follows them', () => {
    const file = path.join(dir, 'index.sqlite');
    const ix = StoreIndex.open(file, silentLogger);
    ix.put(entry('a', 100));
    ix.put(entry('b', 200));
    ix.recordAccess('a', true, 300);
    ix.recordAccess('a', true, 301);
    const reader = StoreIndex.open(file, silentLogger, { readonly: true });
    expect(reader.get('a')!.hits).toBe(0); // not yet written
    ix.flushAccess();
    expect(reader.get('a')).toMatchObject({ hits: 2, lastAccess: 301 });
    expect(ix.leastRecentlyUsed(1).map((e) => e.path)).toEqual(['b']);
    reader.close();
    ix.close();
  });

  test('garbage in the index file is moved aside and a new index made', () => {
    const file = path.join(dir, 'index.sqlite');
    fs.writeFileSync(file, 'this is not a database at all'.repeat(200));
    const warnings: string[] = [];
    const ix = StoreIndex.open(file, { ...silentLogger, warn: (m) => warnings.push(m) });
    ix.put(entry('x', 1));
    expect(ix.totals().entries).toBe(1);
    ix.close();
    expect(warnings[0]).toMatch(/unreadable .* moved aside/);
    expect(fs.readdirSync(dir).filter((n) => n.includes('corrupt'))).toHaveLength(1);
  });
});
