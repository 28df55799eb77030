/**
 * Opening the index keeps SQLite's lock on its -shm: closing any other descriptor of a file drops
 * every POSIX lock the process holds on it, and without that lock the next process to open the
 * index (status, verify) takes itself to be alone, resets -shm, and the view reading it dies of
 * SIGBUS inside SQLite (seen in view tests, 2026-12-05). The mode fix at open must not do that.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { StoreIndex } from '../fs/store/index-db';
import { silentLogger } from '../core/log';

test('the index is 0600 with its -wal and -shm, and this process still holds its lock on -shm', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-index-locks-'));
  const file = path.join(dir, 'index.sqlite');
  // An older install's index, readable by all: opened, it is made 0600, -wal and -shm too.
  fs.writeFileSync(file, '');
  fs.chmodSync(file, 0o644);
  const index = StoreIndex.open(file, silentLogger);
  try {
    index.get('/x');
    for (const f of [file, `${file}-wal`, `${file}-shm`]) expect({ f, mode: fs.statSync(f).mode & 0o777 }).toEqual({ f, mode: 0o600 });
    const ino = fs.statSync(`${file}-shm`).ino;
    const held = fs.readFileSync('/proc/locks', 'utf8').split('\n').filter((l) => l.includes(`:${ino} `) && l.includes(` ${process.pid} `));
    expect(held.length).toBeGreaterThan(0);
  } finally {
    index.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
