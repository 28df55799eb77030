/**
 * Mirror mode at boot: the mirror is served without comparing it with the whole real tree
 * only when the real tree's file system proves nothing wrote to it since the last complete
 * sync (read-only ext4, its write counter unchanged: fs/store/write-stamp.ts); otherwise compared.
 * The real tree is an ext4 image mounted read-only at R/usr.real in a sandbox root.
 */
import { execFileSync, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { CLI_ENTRY } from '../core/package-root';
import { mirrorMarker, mirrorRacyList } from '../fs/store/sync';
import { runBounded } from './helpers/bounded';
import { createOpsSandbox, OpsSandbox } from './helpers/ops-sandbox';
import { fuseAvailable } from './helpers/view-sandbox';

const mkfs = ['/usr/sbin/mkfs.ext4', '/sbin/mkfs.ext4'].find((p) => fs.existsSync(p));
const skip = fuseAvailable() ?? (mkfs ? undefined : 'mkfs.ext4 is missing');
if (skip) console.warn(`mirror boot test skipped: ${skip}`);

/** The CLI without blocking this process (a foreground service of the test's runs meanwhile). */
function cliAsync(root: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return runBounded(process.execPath, [CLI_ENTRY, '--root', root, ...args], { abortBelow: root, timeoutMs: 60000 });
}

(skip ? describe.skip : describe)('mirror mode at boot', () => {
  let ops: OpsSandbox | undefined;
  let mounted: string | undefined;
  afterEach(async () => {
    if (ops) ops.cli(['stop']);
    if (mounted) spawnSync('umount', ['-l', mounted], { timeout: 10000 });
    await ops?.dispose();
    ops = mounted = undefined;
  });

  test('a read-only ext4 real tree unwritten since the sync is served without the comparison; a write in between forces it', () => {
    ops = createOpsSandbox({ config: 'mode = mirror\nhook = off\n' });
    expect(ops.cli(['setup', '--yes']).code).toBe(0);
    const src = path.join(ops.root, 'image-src');
    fs.mkdirSync(path.join(src, 'bin'), { recursive: true });
    fs.writeFileSync(path.join(src, 'bin', 'tool'), 'one');
    const image = path.join(ops.root, 'real.ext4');
    execFileSync(mkfs!, ['-q', '-F', '-d', src, image, '8M'], { timeout: 30000 });
    execFileSync('mount', ['-o', 'loop,ro', image, ops.paths.realTree], { timeout: 10000 });
    mounted = ops.paths.realTree;
    // Unmounted and mounted again, as across a reboot (the loop device of a read-only mount is read-only).
    const remount = (how: 'rw' | 'ro') => {
      execFileSync('umount', [ops!.paths.realTree], { timeout: 10000 });
      execFileSync('mount', ['-o', `loop,${how}`, image, ops!.paths.realTree], { timeout: 10000 });
    };

    expect(ops.cli(['sync']).code).toBe(0);
    expect(JSON.parse(fs.readFileSync(mirrorMarker(ops.paths), 'utf8')).realTree).toMatchObject({ fstype: 'ext4' });
    const fast = ops.cli(['start']);
    expect({ code: fast.code, stdout: fast.stdout }).toMatchObject({ code: 0, stdout: expect.stringMatching(/not compared: the real tree's file system \(ext4 [\d:]+\) is read-only and unwritten since the last complete sync/) });
    expect(fs.readFileSync(path.join(ops.root, 'usr', 'bin', 'tool'), 'utf8')).toBe('one');
    expect(ops.cli(['stop']).code).toBe(0);

    // Changed while fscache was stopped (a read-write remount, as a rescue system would): compared, and refused.
    remount('rw');
    fs.writeFileSync(path.join(ops.paths.realTree, 'bin', 'tool'), 'two');
    remount('ro');
    const stale = ops.cli(['start']);
    expect({ code: stale.code, stderr: stale.stderr }).toMatchObject({ code: 3, stderr: expect.stringMatching(/the mirror is older than the real tree/) });
    expect(fs.readlinkSync(ops.paths.usrLink)).toBe('usr.real');

    // A writable real tree proves nothing: the sync records no stamp, start compares.
    remount('rw');
    expect(ops.cli(['sync']).code).toBe(0);
    expect(JSON.parse(fs.readFileSync(mirrorMarker(ops.paths), 'utf8')).realTree).toBeNull();
    const compared = ops.cli(['start']);
    expect(compared.code).toBe(0);
    expect(compared.stdout).not.toMatch(/not compared/);
    expect(fs.readFileSync(path.join(ops.root, 'usr', 'bin', 'tool'), 'utf8')).toBe('two');
  });

  test('a same-size rewrite that keeps the mtime of a file synced while its mtime was recent: start refuses, sync copies it', () => {
    ops = createOpsSandbox({ config: 'mode = mirror\nhook = off\n' });
    expect(ops.cli(['setup', '--yes']).code).toBe(0);
    const real = (name: string) => path.join(ops!.paths.realTree, 'bin', name);
    fs.mkdirSync(path.dirname(real('x')));
    fs.writeFileSync(real('racy'), 'one');
    // Any byte but NUL in a name: carried through rsync's printed form and back.
    const odd = 'odd\\#012 \n\u00e9';
    fs.writeFileSync(real(odd), 'one');
    fs.writeFileSync(real('old'), 'one');
    // Whole seconds, restored exactly below. Ahead of the clock: racy through every sync here, however slow the machine.
    const ahead = Math.floor(Date.now() / 1000) + 600;
    for (const name of ['racy', odd]) fs.utimesSync(real(name), ahead, ahead);
    fs.utimesSync(real('old'), ahead - 7200, ahead - 7200);
    expect(ops.cli(['sync']).code).toBe(0);
    // Only the files whose mtime was recent when the sync read them are hashed later.
    expect(fs.readFileSync(mirrorRacyList(ops.paths), 'utf8').split('\n').filter(Boolean).sort()).toEqual(['bin/odd\\#134#012 \\#012\\#303\\#251', 'bin/racy']);

    // What a rewrite within the same second leaves on a file system with 1-second timestamps: same size, same mtime.
    const rewrite = (file: string) => {
      expect(fs.statSync(file).mtimeMs).toBe(ahead * 1000);
      fs.writeFileSync(file, 'two');
      fs.utimesSync(file, ahead, ahead);
    };
    rewrite(real('racy'));
    const stale = ops.cli(['start']);
    expect({ code: stale.code, stderr: stale.stderr }).toMatchObject({ code: 3, stderr: expect.stringMatching(/the mirror is older than the real tree \(1 differences, e\.g\. .*bin\/racy/) });
    expect(fs.readlinkSync(ops.paths.usrLink)).toBe('usr.real');

    expect(ops.cli(['sync'])).toMatchObject({ code: 0, stdout: expect.stringMatching(/transferred 1 files/) });
    rewrite(real(odd));
    expect(ops.cli(['start']).code).toBe(3);
    expect(ops.cli(['sync'])).toMatchObject({ code: 0, stdout: expect.stringMatching(/transferred 1 files/) });
    const started = ops.cli(['start']);
    expect({ code: started.code, stderr: started.stderr }).toMatchObject({ code: 0, stderr: '' });
    expect(fs.readFileSync(path.join(ops.root, 'usr', 'bin', 'racy'), 'utf8')).toBe('two');
    expect(fs.readFileSync(path.join(ops.root, 'usr', 'bin', odd), 'utf8')).toBe('two');
  });

  test('start --foreground serves the mirror until SIGTERM; start --wait sees it switched, or its failure', async () => {
    ops = createOpsSandbox({ config: 'mode = mirror\nhook = off\n' });
    expect(ops.cli(['setup', '--yes']).code).toBe(0);
    fs.mkdirSync(path.join(ops.paths.realTree, 'bin'));
    fs.writeFileSync(path.join(ops.paths.realTree, 'bin', 'tool'), 'x');
    let log = '';
    const foreground = async () => {
      const child = spawn(process.execPath, [CLI_ENTRY, '--root', ops!.root, 'start', '--foreground'], { stdio: ['ignore', 'ignore', 'pipe'] });
      child.stderr!.on('data', (d) => (log += d));
      const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
      return { child, exited };
    };
    // No sync yet: the foreground process retries, --wait reports it (exit 4), nothing is switched.
    const first = await foreground();
    const failed = await cliAsync(ops.root, ['start', '--wait']);
    expect({ code: failed.code, stderr: failed.stderr }).toMatchObject({ code: 4, stderr: expect.stringMatching(/the mirror is not served: .*missing or incomplete/) });
    expect(fs.readlinkSync(ops.paths.usrLink)).toBe('usr.real');
    first.child.kill('SIGTERM'); // what the init script does then
    expect(await first.exited).toBe(0);

    expect(ops.cli(['sync']).code).toBe(0);
    const second = await foreground();
    try {
      const waited = await cliAsync(ops.root, ['start', '--wait']);
      expect({ code: waited.code, stdout: waited.stdout, log: waited.code ? log + waited.stderr : '' }).toMatchObject({ code: 0, stdout: expect.stringMatching(/^started \(mirror\)/), log: '' });
      expect(fs.readlinkSync(ops.paths.usrLink)).not.toBe('usr.real');
    } finally {
      second.child.kill('SIGTERM');
    }
    expect({ code: await second.exited, log }).toMatchObject({ code: 0 });
    expect(fs.readlinkSync(ops.paths.usrLink)).toBe('usr.real');
  });
});
