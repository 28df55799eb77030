/**
 * `inspect` and `randomize` given special files (issue 14, finding 10): a FIFO used to hang
 * forever, a device like /dev/zero to be read until 12 GB, and `randomize good.so /dev/full` to
 * replace the device node with a regular file. Each is now refused at once with one line and
 * exit 3. The CLI runs as its own process with a timeout (a hang fails the test, not the run);
 * the FIFO is planted by nobody in a directory anyone may write (the attack: root's inspect of a
 * user's file), the device nodes are our own, made with mknod in that directory.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { announceSkip, buildZlib } from '../elf/libs';

const CLI = path.join(__dirname, '..', '..', 'dist', 'cli', 'main.js');
const NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups'];
const z = buildZlib();
const run = z.ok ? describe : describe.skip;
if (!z.ok) announceSkip('special-file CLI tests', z.skip);

function cli(...args: string[]): { status: number | null; stdout: string; stderr: string; ms: number } {
  const t0 = Date.now();
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, ms: Date.now() - t0 };
}

run('inspect and randomize on special files', () => {
  let dir: string;
  let good: string;
  let fifo: string;
  let zero: string;
  let full: string;

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-special-'));
    good = path.join(dir, 'libz.so.1');
    fs.copyFileSync((z as { lib: string }).lib, good);
    fs.chmodSync(dir, 0o1777); // as /tmp: anyone may plant a file there
    fifo = path.join(dir, 'fifo');
    execFileSync('setpriv', [...NOBODY, 'mkfifo', fifo], { timeout: 10_000 });
    expect(fs.statSync(fifo).uid).toBe(65534);
    zero = path.join(dir, 'zero');
    execFileSync('mknod', [zero, 'c', '1', '5']); // as /dev/zero
    full = path.join(dir, 'full');
    execFileSync('mknod', ['-m', '666', full, 'c', '1', '7']); // as /dev/full
  });

  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const refusedAtOnce = (r: ReturnType<typeof cli>, what: RegExp) => {
    expect(r.status).toBe(3);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(what);
    expect(r.ms).toBeLessThan(10_000);
  };

  test('a FIFO as input is refused at once (inspect and randomize)', () => {
    refusedAtOnce(cli('inspect', fifo), /not a regular file \(a FIFO\)/);
    refusedAtOnce(cli('randomize', fifo, path.join(dir, 'out.so')), /not a regular file \(a FIFO\)/);
    expect(fs.existsSync(path.join(dir, 'out.so'))).toBe(false);
  });

  test('a character device as input is refused, not read', () => {
    refusedAtOnce(cli('inspect', zero), /not a regular file \(a character device\)/);
    refusedAtOnce(cli('randomize', zero, path.join(dir, 'out.so')), /not a regular file \(a character device\)/);
  });

  test('a device, FIFO, directory or link to a device as output is never replaced', () => {
    const link = path.join(dir, 'link-to-full');
    fs.symlinkSync(full, link);
    const sub = path.join(dir, 'sub');
    fs.mkdirSync(sub);
    for (const [out, what] of [[full, /character device\); not replaced/], [fifo, /a FIFO\); not replaced/], [sub, /a directory\); not replaced/], [link, /character device\); not replaced/]] as const) {
      refusedAtOnce(cli('randomize', good, out, '--seed', '01'), what);
    }
    expect(fs.lstatSync(full).isCharacterDevice()).toBe(true);
    expect(fs.lstatSync(fifo).isFIFO()).toBe(true);
    expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
    expect(fs.readdirSync(dir).filter((n) => n.endsWith('.tmp'))).toEqual([]); // nothing left behind
  });

  test('regular files still work, and a regular output is replaced as before', () => {
    const out = path.join(dir, 'out.so');
    fs.writeFileSync(out, 'old');
    const r = cli('randomize', good, out, '--seed', '01');
    expect(r.status).toBe(0);
    expect(fs.readFileSync(out).subarray(0, 4).toString('latin1')).toBe('\x7fELF');
    const i = cli('inspect', out);
    expect([i.status, i.stdout]).toEqual([0, expect.stringMatching(/randomizable/)]);
  });
});
