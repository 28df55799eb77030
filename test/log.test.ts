/** core/log.ts: syslog priorities under the journal, timestamps elsewhere, and the bounded file log. */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { keepLogBounded } from '../core/log';
import { PACKAGE_ROOT } from '../core/package-root';

const LOG_JS = path.join(PACKAGE_ROOT, 'dist', 'core', 'log.js');
let dir: string;
beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-log-'))));
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Runs a node program whose stderr is `file`, with JOURNAL_STREAM as given; returns what it wrote there. */
function logInto(file: string, journalStream: string | undefined, program: string): string {
  const fd = fs.openSync(file, 'a');
  try {
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, ...(journalStream ? { JOURNAL_STREAM: journalStream } : {}) };
    const r = spawnSync(process.execPath, ['-e', program, LOG_JS], { env, stdio: ['ignore', 'pipe', fd], timeout: 20000 });
    if (r.status !== 0) throw new Error(`node exited ${r.status}: ${r.stdout}`);
  } finally {
    fs.closeSync(fd);
  }
  return fs.readFileSync(file, 'utf8');
}

const FOUR_LINES = `const { makeLogger } = require(process.argv[1]); const l = makeLogger('info');
l.error('boom'); l.warn('careful'); l.info('fine'); l.debug('hidden');`;

(fs.existsSync(LOG_JS) ? describe : describe.skip)('log lines', () => {
  test('under the journal: <N> priorities, no timestamp; children writing through a pipe inherit it', () => {
    const file = path.join(dir, 'journal');
    fs.writeFileSync(file, '');
    const st = fs.statSync(file);
    const out = logInto(file, `${st.dev}:${st.ino}`, FOUR_LINES + `
      // A child whose stderr is a pipe read by this process (the view under the supervisor).
      const r = require('child_process').spawnSync(process.execPath, ['-e', "require(process.argv[1]).makeLogger('info').warn('from the view')", process.argv[1]], { encoding: 'utf8' });
      process.stderr.write(r.stderr);`);
    const pid = /fscache\[(\d+)\]/.exec(out)![1];
    expect(out).toMatch(new RegExp(`^<3>fscache\\[${pid}\\]: boom\\n<4>fscache\\[${pid}\\]: careful\\n<6>fscache\\[${pid}\\]: fine\\n<4>fscache\\[\\d+\\]: from the view\\n$`));
  });

  test('elsewhere (a terminal, the file log, a JOURNAL_STREAM naming another file): timestamp and level', () => {
    const file = path.join(dir, 'plain');
    for (const stream of [undefined, '1:2']) {
      fs.writeFileSync(file, '');
      const out = logInto(file, stream, FOUR_LINES);
      expect(out).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z fscache\[\d+\] error: boom\n\S+ fscache\[\d+\] warn: careful\n\S+ fscache\[\d+\] info: fine\n$/);
    }
  });
});

test('the file log is copied to .1 and emptied beyond its cap; writers holding it open go on at its new end', () => {
  const file = path.join(dir, 'fscache.log');
  const fd = fs.openSync(file, 'a');
  const other = fs.openSync(file, 'a'); // another process's descriptor (the view, the guard)
  try {
    fs.writeSync(fd, 'a'.repeat(1500));
    const stop = keepLogBounded(file, 1000, 60000, fd);
    stop();
    expect(fs.statSync(`${file}.1`).size).toBe(1500);
    expect(fs.statSync(file).size).toBe(0);
    fs.writeSync(other, 'after\n');
    expect(fs.readFileSync(file, 'utf8')).toBe('after\n'); // no hole of 1500 zero bytes before it
    // Under the cap: nothing happens; the second rotation replaces the one old file.
    keepLogBounded(file, 1000, 60000, fd)();
    expect(fs.readFileSync(file, 'utf8')).toBe('after\n');
    fs.writeSync(fd, 'b'.repeat(1200));
    keepLogBounded(file, 1000, 60000, fd)();
    expect(fs.readFileSync(`${file}.1`, 'utf8')).toBe('after\n' + 'b'.repeat(1200));
    // A descriptor that is not the named file (stderr elsewhere) is left alone.
    const elsewhere = path.join(dir, 'elsewhere');
    fs.writeFileSync(elsewhere, 'c'.repeat(2000));
    keepLogBounded(elsewhere, 1000, 60000, fd)();
    expect(fs.statSync(elsewhere).size).toBe(2000);
  } finally {
    fs.closeSync(fd);
    fs.closeSync(other);
  }
});
