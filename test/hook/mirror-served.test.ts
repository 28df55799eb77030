/**
 * Mirror mode serves images under the libraries' own names (issue 16): a small real tree (a C
 * program, the randomizable demo library in /usr/lib, libc and the loader), synced to the mirror;
 * `start` writes the epoch's image into the mirror at the library's path. A program launched with
 * an empty environment (no LD_AUDIT anywhere) runs it with shuffled offsets and the original's
 * output; `rerandomize` while a program calls the library in a loop: it keeps its code, new launches
 * get a new layout; the comparison before serving and `sync` leave the images alone; with
 * `serve_images = off` the originals come back.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { createOpsSandbox, OpsSandbox } from '../helpers/ops-sandbox';
import { fuseAvailable } from '../helpers/view-sandbox';
import { FIX } from './sandbox';
import { launchHeld, parseDemo, whileHeld } from './view-root';

const DEMO = path.join(__dirname, '..', '..', 'loader-hook', 'demo');
const RANDOMIZE = ['-O2', '-fPIC', '-ffunction-sections', '-fno-inline', '-shared', '-Wl,--emit-relocs'];
const CONF = 'mode = mirror\nlibrary_dirs = usr/lib\n';

const skip = fuseAvailable();
if (skip) console.log(`mirror images: skipped: ${skip}`);

(skip ? describe.skip : describe)('mirror mode: images written into the mirror under the libraries\' names', () => {
  let ops: OpsSandbox | undefined;
  afterAll(async () => {
    await ops?.dispose();
  });

  test('served with no auditor, rerandomized under a running caller, left alone by sync, originals back when off', async () => {
    ops = createOpsSandbox({ config: CONF });
    expect(ops.cli(['setup', '--yes']).code).toBe(0);
    const real = ops.paths.realTree;
    for (const d of ['bin', 'lib/x86_64-linux-gnu', 'lib64']) fs.mkdirSync(path.join(real, d), { recursive: true });
    for (const lib of ['libc.so.6', 'ld-linux-x86-64.so.2']) fs.copyFileSync(`/usr/lib/x86_64-linux-gnu/${lib}`, path.join(real, 'lib/x86_64-linux-gnu', lib));
    fs.symlinkSync('../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2', path.join(real, 'lib64/ld-linux-x86-64.so.2'));
    fs.copyFileSync('/usr/bin/env', path.join(real, 'bin', 'env')); // launchHeld starts programs through R's env -i
    fs.chmodSync(path.join(real, 'bin', 'env'), 0o755);
    const lib = path.join(real, 'lib', 'libfscachedemo.so');
    execFileSync('gcc', [...RANDOMIZE, '-Wl,-soname,libfscachedemo.so', '-o', lib, path.join(DEMO, 'libfscachedemo.c')]);
    fs.chmodSync(lib, 0o644);
    const link = ['-Wl,-rpath,/usr/lib', `-L${path.join(real, 'lib')}`, '-lfscachedemo'];
    execFileSync('gcc', ['-O2', '-o', path.join(real, 'bin', 'svdemo'), path.join(DEMO, 'hookdemo.c'), ...link]);
    execFileSync('gcc', ['-O2', '-o', path.join(real, 'bin', 'callsloop'), path.join(FIX, 'callsloop.c'), ...link]);
    const original = Object.fromEntries([...execFileSync('nm', [lib], { encoding: 'utf8' }).matchAll(/^([0-9a-f]+) T demo_(\w+)$/gm)].map((m) => [m[2], parseInt(m[1], 16)]));
    const launch = () => {
      const r = spawnSync('/usr/sbin/chroot', [ops!.root, '/usr/bin/svdemo'], { env: {}, encoding: 'utf8', timeout: 30_000 });
      return { status: r.status, stderr: r.stderr, ...parseDemo(r.stdout) };
    };

    expect(ops.cli(['sync']).code).toBe(0);
    const s = ops.cli(['start']);
    expect({ code: s.code, stderr: s.stderr }).toMatchObject({ code: 0, stderr: expect.stringMatching(/LD_AUDIT not set/) });
    expect(ops.cli(['status']).stdout).toMatch(/hook +1 images written into the mirror under the libraries' names/);
    const first = launch();
    expect({ status: first.status, stderr: first.stderr }).toEqual({ status: 0, stderr: '' });
    expect(Object.keys(first.offsets).sort()).toEqual(Object.keys(original).sort());
    expect(first.offsets).not.toEqual(original);
    const checksum = first.checksum;

    // Held: it maps the library's own path in the mirror, no auditor, no image path.
    const held = await launchHeld(ops.root, ['/usr/bin/callsloop'], {});
    const end = await whileHeld(held, async () => {
      expect(held.maps).toContain(`${ops!.paths.viewMount}/lib/libfscachedemo.so`);
      expect(held.maps).not.toMatch(/fscache-audit|images\//);
      expect(ops!.cli(['rerandomize']).code).toBe(0);
      const next = launch();
      expect(next.checksum).toBe(checksum);
      expect(next.offsets).not.toEqual(first.offsets);
      expect(next.offsets).not.toEqual(original);
    });
    expect(end.status).toBe(0);
    expect(end.out).toMatch(/calls [1-9]\d* wrong 0\n/);

    // The comparison before serving and sync leave the images of unchanged libraries alone.
    expect(ops.cli(['stop']).code).toBe(0);
    const sync = ops.cli(['sync']);
    expect(sync.stdout).toMatch(/transferred 0 files, deleted 0/);
    expect(ops.cli(['start']).code).toBe(0);
    const again = launch();
    expect(again.offsets).not.toEqual(original);

    // Off: the originals are back in the mirror.
    expect(ops.cli(['stop']).code).toBe(0);
    fs.writeFileSync(path.join(ops.root, 'etc', 'fscache.conf'), CONF + 'serve_images = off\n');
    expect(ops.cli(['start']).code).toBe(0);
    expect(fs.readFileSync(path.join(ops.paths.mirror, 'lib', 'libfscachedemo.so')).equals(fs.readFileSync(lib))).toBe(true);
    const off = spawnSync('/usr/sbin/chroot', [ops.root, '/usr/bin/svdemo'], { env: {}, encoding: 'utf8', timeout: 30_000 });
    expect(parseDemo(off.stdout).offsets).toEqual(original);
    expect(ops.cli(['stop']).code).toBe(0);
  });
});
