/**
 * The loader hook and the randomization daemon, end to end in a sandbox root: real programs
 * (SQLite + zlib consumer) launched with LD_AUDIT, the daemon as its own process, planted and
 * hostile state. Run `npx tsc -p . && make -C loader-hook` first (the daemon runs from dist/).
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as path from 'path';
import { loadConfig } from '../../core/config';
import { silentLogger } from '../../core/log';
import { derivePaths } from '../../core/paths';
import { ImageStore } from '../../loader-hook/images';
import { announceSkip, CFLAGS } from '../elf/libs';
import {
  buildOriginLibs, cli, currentEpoch, FIX, imageFor, imagePaths, installLib, launch, launchAsync, Libs, libs, makeSandbox,
  randomizations, removeSandbox, Sandbox, startDaemon, stopDaemon, writeConf,
} from './sandbox';

const L = libs();
const run = 'skip' in L ? describe.skip : describe;
if ('skip' in L) announceSkip('loader hook tests', L.skip);

function storeOf(sb: Sandbox): ImageStore {
  const config = loadConfig(sb.conf, sb.root); // trusted from R down, as the CLI reads it
  return new ImageStore(derivePaths(sb.root, config), config, silentLogger);
}

/** A stand-in daemon on the hook socket that hangs or answers garbage. */
function fakeDaemon(sb: Sandbox, behave: 'hang' | 'garbage'): Promise<net.Server> {
  const sock = path.join(sb.root, 'run', 'fscache', 'hook.sock');
  fs.rmSync(sock, { force: true });
  const server = net.createServer((c) => {
    c.on('error', () => undefined);
    if (behave === 'garbage') c.on('data', () => c.end('OKAY\0\xff not a reply\n'));
  });
  return new Promise((resolve) => server.listen(sock, () => resolve(server)));
}

run('loader hook', () => {
  const l = L as Libs;
  let sb: Sandbox;
  const servers: net.Server[] = [];
  let zlib: string;
  let sqlite: string;

  beforeEach(() => {
    sb = makeSandbox(l);
    zlib = path.join(sb.lib, 'libz.so.1');
    sqlite = path.join(sb.lib, 'libsqlite3.so.0');
  });

  afterEach(async () => {
    await stopDaemon(sb, 'SIGKILL');
    for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
    removeSandbox(sb);
  });

  test('a SQLite + zlib consumer runs on shared images; /proc/PID/maps names them', async () => {
    const plain = launch(sb, { LD_AUDIT: '' });
    expect(plain.out).toMatch(/^ok 200 /);
    expect(plain.maps.has(zlib)).toBe(true);

    await startDaemon(sb);
    const first = launch(sb);
    expect(first.status).toBe(0);
    expect(first.out).toMatch(/^ok 200 /);
    const e = currentEpoch(sb);
    expect(first.maps.has(imageFor(sb, zlib, e))).toBe(true);
    expect(first.maps.has(imageFor(sb, sqlite, e))).toBe(true);
    expect(first.maps.has(zlib)).toBe(false);
    expect(first.maps.has(sqlite)).toBe(false);
    // The image is a different layout of the same library, root-owned and read-only.
    const st = fs.statSync(imageFor(sb, sqlite, e));
    expect([st.uid, st.mode & 0o777]).toEqual([0, 0o444]);
    expect(fs.readFileSync(imageFor(sb, sqlite, e)).equals(fs.readFileSync(sqlite))).toBe(false);

    const second = launch(sb);
    expect(second.out).toMatch(/^ok 200 /);
    expect(second.maps.get(imageFor(sb, sqlite, e))).toBe(first.maps.get(imageFor(sb, sqlite, e)));
    expect(randomizations(sb, 'libsqlite3.so.0')).toBe(1);
    expect(randomizations(sb, 'libz.so.1')).toBe(1);

    const listed = JSON.parse(cli(sb, 'images', '--json').stdout) as { images: { source: string }[] };
    expect(listed.images.map((i) => path.basename(i.source)).sort()).toEqual(['libsqlite3.so.0', 'libz.so.1']);
  });

  test('16 concurrent launches map one image inode and cause one randomization per library', async () => {
    await startDaemon(sb);
    const runs = await Promise.all(Array.from({ length: 16 }, () => launchAsync(sb, ['200'])));
    const e = currentEpoch(sb);
    for (const r of runs) {
      expect(r.status).toBe(0);
      expect(r.out).toMatch(/^ok 200 /);
    }
    const inodes = new Set(runs.map((r) => r.maps.get(imageFor(sb, sqlite, e))));
    expect([...inodes]).toEqual([fs.statSync(imageFor(sb, sqlite, e)).ino]);
    expect(new Set(runs.map((r) => r.maps.get(imageFor(sb, zlib, e)))).size).toBe(1);
    expect(randomizations(sb, 'libsqlite3.so.0')).toBe(1);
    expect(randomizations(sb, 'libz.so.1')).toBe(1);
  });

  test('a new epoch gives a different layout; the old epoch goes once no process maps it', async () => {
    await startDaemon(sb);
    const e1 = currentEpoch(sb);
    const holder = launchAsync(sb, ['4000']); // keeps epoch 1 mapped
    for (let i = 0; i < 600 && !fs.existsSync(imageFor(sb, zlib, e1)); i++) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 300)); // the holder maps it
    const r = cli(sb, 'rerandomize');
    expect(r.status).toBe(0);
    const e2 = currentEpoch(sb);
    expect(e2).not.toBe(e1);
    expect(fs.existsSync(path.join(sb.root, 'fscache', 'images', e1))).toBe(true); // still mapped
    const after = launch(sb);
    expect(after.out).toMatch(/^ok 200 /);
    expect(after.maps.has(imageFor(sb, zlib, e2))).toBe(true);
    const h = await holder;
    expect(h.maps.has(imageFor(sb, zlib, e1))).toBe(true);
    expect(fs.readFileSync(imageFor(sb, zlib, e1)).equals(fs.readFileSync(imageFor(sb, zlib, e2)))).toBe(false);
    const store = storeOf(sb);
    try {
      expect(store.gcEpochs()).toEqual([e1]);
    } finally {
      store.close();
    }
    expect(fs.existsSync(path.join(sb.root, 'fscache', 'images', e1))).toBe(false);
  });

  test('daemon killed, hanging or answering garbage: launches succeed with the originals', async () => {
    await startDaemon(sb);
    await stopDaemon(sb, 'SIGKILL'); // leaves a stale socket behind
    const killed = launch(sb);
    expect(killed.status).toBe(0);
    expect(killed.maps.has(zlib) && killed.maps.has(sqlite)).toBe(true);
    expect(imagePaths(killed, sb)).toEqual([]);

    writeConf(sb, { miss_wait_ms: '400' });
    expect(cli(sb, 'rerandomize').status).toBe(0); // rewrites the epoch file with the new wait
    servers.push(await fakeDaemon(sb, 'hang'));
    const hung = launch(sb);
    expect(hung.status).toBe(0);
    expect(hung.maps.has(sqlite)).toBe(true);
    expect(hung.ms).toBeLessThan(2 * 400 + 1500); // two misses, each bounded by miss_wait_ms

    for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
    servers.push(await fakeDaemon(sb, 'garbage'));
    const garbage = launch(sb);
    expect(garbage.status).toBe(0);
    expect(garbage.out).toMatch(/^ok 200 /);
    expect(imagePaths(garbage, sb)).toEqual([]);
  });

  test('planted images are ignored unless root-owned, not writable by others, not symlinks, in a trusted directory', () => {
    writeConf(sb, { on_miss: 'original' });
    expect(cli(sb, 'rerandomize').status).toBe(0);
    const e = currentEpoch(sb);
    const img = imageFor(sb, zlib, e);
    const good = path.join(sb.root, 'good.so');
    expect(cli(sb, 'randomize', zlib, good).status).toBe(0);
    fs.chmodSync(good, 0o444);
    const plant = (how: (p: string) => void) => {
      fs.rmSync(img, { force: true });
      how(img);
      return launch(sb);
    };
    // Copied with the daemon's seal (mtime = size): only trust, not the seal, is under test here.
    const copy = (p: string) => { fs.copyFileSync(good, p); const n = fs.statSync(p).size; fs.utimesSync(p, n, n); };

    const control = plant((p) => { copy(p); fs.chmodSync(p, 0o444); });
    expect(control.maps.has(img)).toBe(true); // the planting is at the right name

    const nobody = plant((p) => { copy(p); fs.chmodSync(p, 0o444); fs.chownSync(p, 65534, 65534); });
    expect(nobody.maps.has(img)).toBe(false);
    expect(nobody.maps.has(zlib)).toBe(true);

    const worldWritable = plant((p) => { copy(p); fs.chmodSync(p, 0o666); });
    expect(worldWritable.maps.has(zlib)).toBe(true);

    const groupWritable = plant((p) => { copy(p); fs.chmodSync(p, 0o464); });
    expect(groupWritable.maps.has(zlib)).toBe(true);

    const symlink = plant((p) => fs.symlinkSync(good, p));
    expect(symlink.maps.has(zlib)).toBe(true);

    const openDir = plant((p) => { copy(p); fs.chmodSync(p, 0o444); fs.chmodSync(path.dirname(p), 0o777); });
    expect(openDir.maps.has(zlib)).toBe(true);
    fs.chmodSync(path.dirname(img), 0o755);

    const foreignDir = plant((p) => { copy(p); fs.chmodSync(p, 0o444); fs.chownSync(path.dirname(p), 65534, 65534); });
    expect(foreignDir.maps.has(zlib)).toBe(true);
    fs.chownSync(path.dirname(img), 0, 0);

    for (const r of [nobody, worldWritable, groupWritable, symlink, openDir, foreignDir]) expect(r.out).toMatch(/^ok 200 /);
  });

  test('libraries outside the library directories, unreadable to others or not root-owned are refused', async () => {
    const other = path.join(sb.root, 'other');
    fs.mkdirSync(other, { mode: 0o755 });
    installLib(zlib, path.join(other, 'libz.so.1'));
    await startDaemon(sb);
    const r = launch(sb, { LD_LIBRARY_PATH: other });
    expect(r.status).toBe(0);
    expect(r.maps.has(path.join(other, 'libz.so.1'))).toBe(true);
    expect(randomizations(sb, 'other/libz.so.1')).toBe(0);

    const store = storeOf(sb);
    try {
      expect(store.makeImage(path.join(other, 'libz.so.1'))).toMatchObject({ kind: 'refused', reason: expect.stringMatching(/outside the configured library directories/) });
      fs.chmodSync(zlib, 0o640);
      expect(store.makeImage(zlib)).toMatchObject({ kind: 'refused', reason: 'not readable by others' });
      fs.chmodSync(zlib, 0o664);
      expect(store.makeImage(zlib)).toMatchObject({ kind: 'refused', reason: 'writable by group or others' });
      fs.chmodSync(zlib, 0o644);
      fs.chownSync(zlib, 65534, 65534);
      expect(store.makeImage(zlib)).toMatchObject({ kind: 'refused', reason: 'not owned by root' });
      fs.chownSync(zlib, 0, 0);
      // A symlink inside the library dirs to a file outside them is judged by the file opened.
      fs.symlinkSync(path.join(other, 'libz.so.1'), path.join(sb.lib, 'libzlink.so.1'));
      expect(store.makeImage(path.join(sb.lib, 'libzlink.so.1'))).toMatchObject({ kind: 'refused' });
      expect(store.passThroughs()).toEqual([]); // policy refusals are not pass-throughs
    } finally {
      store.close();
    }
  });

  test('a library the randomizer refuses is passed through with its reason and not asked for again', async () => {
    const plain = path.join(sb.lib, 'libplain.so');
    execFileSync('gcc', ['-O2', '-fPIC', '-shared', path.join(FIX, 'libb.c'), '-o', plain]); // no --emit-relocs
    fs.chmodSync(plain, 0o644);
    const junk = path.join(sb.lib, 'libjunk.so.1');
    fs.writeFileSync(junk, Buffer.concat([Buffer.from('\x7fELF\x02\x01\x01'), Buffer.alloc(200, 0xff)]));
    fs.chmodSync(junk, 0o644);
    await startDaemon(sb);
    const env = { FSCACHE_TEST_DLOPEN: plain, FSCACHE_TEST_SYM: 'lib_b_value' };
    const first = launch(sb, env);
    expect(first.status).toBe(0);
    expect(first.out).toMatch(/value 33/);
    expect(first.maps.has(plain)).toBe(true);
    const e = currentEpoch(sb);
    const marker = imageFor(sb, plain, e).replace(/\.so$/, '.pass');
    expect(fs.existsSync(marker)).toBe(true);
    const listed = JSON.parse(cli(sb, 'images', '--json').stdout) as { passThroughs: { source: string; reason: string }[] };
    expect(listed.passThroughs).toEqual([expect.objectContaining({ source: plain, reason: expect.stringMatching(/relocation/i) })]);

    const store = storeOf(sb);
    try {
      expect(store.makeImage(junk)).toMatchObject({ kind: 'pass', reason: expect.stringMatching(/malformed|ELF|record/i) });
    } finally {
      store.close();
    }

    // Asked again, a hanging daemon would cost the wait: the marker means it is not asked.
    await stopDaemon(sb, 'SIGKILL');
    servers.push(await fakeDaemon(sb, 'hang'));
    const again = launch(sb, env);
    expect(again.out).toMatch(/value 33/);
    expect(again.ms).toBeLessThan(3000);
  });

  test('a library replaced after its image was made never gets the old image', async () => {
    await startDaemon(sb);
    const first = launch(sb);
    const e = currentEpoch(sb);
    const old = imageFor(sb, zlib, e);
    expect(first.maps.has(old)).toBe(true);

    await stopDaemon(sb);
    installLib(l.zlib, zlib); // new inode, same content
    const noDaemon = launch(sb);
    expect(noDaemon.maps.has(old)).toBe(false);
    expect(noDaemon.maps.has(zlib)).toBe(true);

    // Rewritten in place (same inode): the mtime changes the key.
    fs.writeFileSync(zlib, fs.readFileSync(l.zlib));
    await startDaemon(sb);
    const fresh = launch(sb);
    expect(fresh.out).toMatch(/^ok 200 /);
    expect(fresh.maps.has(old)).toBe(false);
    expect(fresh.maps.has(imageFor(sb, zlib, e))).toBe(true);
  });

  test('$ORIGIN: a redirected library still finds its dependencies; absolute dlopen of it is not redirected at LA_SER_ORIG', async () => {
    const sub = path.join(sb.lib, 'sub');
    buildOriginLibs(sub);
    const prog = path.join(sb.root, 'originprog');
    fs.writeFileSync(path.join(sb.root, 'originprog.c'), '#include <stdio.h>\nint lib_a_value(void);\nint main(void){printf("value %d\\n", lib_a_value());\n' +
      'FILE*m=fopen("/proc/self/maps","r");char l[1024];while(fgets(l,sizeof l,m)){char*p=__builtin_strchr(l,\'/\');if(p)printf("map %s",p);}return 0;}\n');
    execFileSync('gcc', [...CFLAGS.split(' '), path.join(sb.root, 'originprog.c'), '-o', prog, `-L${sub}`, '-la', `-Wl,-rpath,${sub}`]);
    await startDaemon(sb);
    const e = currentEpoch(sb);
    const byName = launch(sb, {}, [], prog);
    expect(byName.out).toMatch(/value 50/);
    expect(byName.out).toContain(imageFor(sb, path.join(sub, 'liba.so'), e)); // bare name: later stage
    expect(byName.out).toContain(imageFor(sb, path.join(sub, 'libb.so'), e)); // found through $ORIGIN

    const byPath = launch(sb, { FSCACHE_TEST_DLOPEN: path.join(sub, 'liba.so') });
    expect(byPath.out).toMatch(/value 50/);
    expect(byPath.out).toContain(`dlopen ${path.join(sub, 'liba.so')}`); // $ORIGIN user: not redirected at ORIG
    expect(byPath.maps.has(imageFor(sb, path.join(sub, 'libb.so'), e))).toBe(true);

    // Without $ORIGIN, an absolute dlopen is redirected at LA_SER_ORIG: l_name (dladdr, gdb) is the image.
    const libbImg = imageFor(sb, path.join(sub, 'libb.so'), e);
    const direct = launch(sb, { FSCACHE_TEST_DLOPEN: path.join(sub, 'libb.so'), FSCACHE_TEST_SYM: 'lib_b_value' });
    expect(direct.out).toMatch(/value 33/);
    expect(direct.out).toContain(`dlopen ${libbImg}`);
  });

  test('eviction keeps images under images_max_count; evicted images stay usable by their mappers', async () => {
    writeConf(sb, { images_max_count: '1' });
    await startDaemon(sb);
    const r = launch(sb);
    expect(r.out).toMatch(/^ok 200 /);
    const e = currentEpoch(sb);
    const left = fs.readdirSync(path.join(sb.root, 'fscache', 'images', e)).filter((n) => n.endsWith('.so'));
    expect(left).toHaveLength(1);
    expect(imagePaths(r, sb)).toHaveLength(2); // the process mapped both before one was unlinked
  });

  test('threads dlopen concurrently while the process forks: every library is its image', () => {
    const dir = path.join(sb.lib, 'many');
    fs.mkdirSync(dir, { mode: 0o755 });
    const names = Array.from({ length: 8 }, (_, i) => path.join(dir, `libt${i}.so`));
    for (const [i, n] of names.entries()) {
      // Distinct bytes per library (a different constant), so each is its own image.
      fs.writeFileSync(path.join(dir, `t${i}.c`), fs.readFileSync(path.join(FIX, 'libb.c'), 'utf8') + `int lib_t${i}_id(void) { return ${i}; }\n`);
      execFileSync('gcc', [...CFLAGS.split(' '), '-fno-inline', '-shared', '-Wl,--emit-relocs', path.join(dir, `t${i}.c`), '-o', n]);
      fs.chmodSync(n, 0o644);
    }
    const prog = path.join(sb.root, 'threads');
    execFileSync('gcc', ['-O2', '-pthread', path.join(FIX, 'threads.c'), '-o', prog, '-ldl']);
    writeConf(sb, { on_miss: 'original' });
    expect(cli(sb, 'warm').status).toBe(0);
    const e = currentEpoch(sb);
    for (let round = 0; round < 5; round++) {
      const r = launch(sb, {}, names, prog);
      expect(r.status).toBe(0);
      expect(r.out).toMatch(/^good 8/);
      for (const n of names) expect(r.out).toContain(imageFor(sb, n, e));
    }
  });

  test('a full images directory: the original loads, the daemon lives on, `images` says why', async () => {
    const images = path.join(sb.root, 'fscache', 'images');
    fs.mkdirSync(images, { recursive: true, mode: 0o755 });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=600k,mode=0755', 'tmpfs', images]);
    try {
      await startDaemon(sb);
      const r = launch(sb);
      expect(r.status).toBe(0);
      expect(r.out).toMatch(/^ok 200 /);
      const e = currentEpoch(sb);
      expect(r.maps.has(sqlite)).toBe(true); // 1.4 MB image: no room
      expect(r.maps.has(imageFor(sb, zlib, e))).toBe(true); // 109 KB: fits
      expect(fs.readdirSync(path.join(images, e)).filter((n) => n.includes('.tmp'))).toEqual([]);
      const listed = JSON.parse(cli(sb, 'images', '--json').stdout) as { failures: { source: string; message: string }[] };
      expect(listed.failures).toEqual([expect.objectContaining({ source: sqlite, message: expect.stringMatching(/ENOSPC/) })]);
      expect(launch(sb).out).toMatch(/^ok 200 /); // and the daemon still answers
    } finally {
      await stopDaemon(sb, 'SIGKILL');
      execFileSync('umount', ['-l', images]);
    }
  });

  test('warm makes every eligible library an image and reports the rest', () => {
    fs.writeFileSync(path.join(sb.lib, 'libjunk.so.1'), 'not an ELF file at all');
    fs.chmodSync(path.join(sb.lib, 'libjunk.so.1'), 0o644);
    const r = cli(sb, 'warm');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/3 libraries: 2 randomized, 0 already had an image, 1 passed through/);
    writeConf(sb, { on_miss: 'original' });
    const hit = launch(sb);
    expect(imagePaths(hit, sb)).toHaveLength(2);
  });
});
