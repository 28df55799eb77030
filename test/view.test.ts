/**
 * The view over this machine's /usr (bound read-only): bytes, metadata and real
 * programs launched in a chroot whose usr link points at the view.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { runInChroot } from '../cli/demo';
import { StoreIndex } from '../fs/store/index-db';
import { silentLogger } from '../core/log';
import { createViewSandbox, fuseAvailable, ViewSandbox, waitFor } from './helpers/view-sandbox';
import { shaOfFile } from './helpers/hash';

const skip = fuseAvailable();
const maybe = skip ? describe.skip : describe;
if (skip) console.warn(`view tests skipped: ${skip}`);

/** Up to `limit` regular files under dir of the real tree, in a stable order. */
function sampleFiles(realTree: string, dirs: string[], limit: number): string[] {
  const out: string[] = [];
  for (const dir of dirs) {
    const names = fs.readdirSync(path.join(realTree, dir)).sort();
    for (const name of names) {
      const rel = path.join(dir, name);
      const st = fs.lstatSync(path.join(realTree, rel));
      if (st.isFile() && st.size < 8 << 20) out.push(rel);
      if (out.length >= limit) return out;
    }
  }
  return out;
}


maybe('view over the host /usr', () => {
  let vs: ViewSandbox;

  beforeAll(async () => {
    vs = createViewSandbox({ config: 'access_flush_ms = 200\n' });
    await vs.startView();
  });
  afterAll(async () => {
    await vs?.dispose();
  });

  test('every byte of several hundred files read through the view equals the real file', () => {
    const files = sampleFiles(vs.paths.realTree, ['lib/x86_64-linux-gnu', 'bin', 'share/perl5', 'lib/python3.11/json'], 400);
    expect(files.length).toBeGreaterThanOrEqual(300);
    for (const rel of files) {
      expect({ rel, hash: shaOfFile(vs.inView(rel)) }).toEqual({ rel, hash: shaOfFile(path.join(vs.paths.realTree, rel)) });
    }
  });

  test('metadata, directory listings and link targets are the real tree\'s', () => {
    for (const dir of ['bin', 'lib/x86_64-linux-gnu', 'share']) {
      expect(fs.readdirSync(vs.inView(dir)).sort()).toEqual(fs.readdirSync(path.join(vs.paths.realTree, dir)).sort());
    }
    const real = fs.lstatSync(path.join(vs.paths.realTree, 'bin/perl'));
    const seen = fs.lstatSync(vs.inView('bin/perl'));
    expect([seen.mode, seen.size, seen.uid, seen.mtimeMs]).toEqual([real.mode, real.size, real.uid, Math.floor(real.mtimeMs)]);
    expect(fs.readlinkSync(vs.inView('bin/python3'))).toBe(fs.readlinkSync(path.join(vs.paths.realTree, 'bin/python3')));
    expect(() => fs.writeFileSync(vs.inView('bin/fscache-should-not-exist'), 'x')).toThrow(/EROFS|EACCES|EPERM/);
    expect(() => fs.openSync(vs.inView('bin/perl'), 'r+')).toThrow(/EROFS|EACCES/);
  });

  test('mmap through the view works (python maps a file and reads it)', async () => {
    const r = await runInChroot(vs.sandbox, [
      '/usr/bin/python3', '-c',
      'import mmap,hashlib;f=open("/usr/bin/perl","rb");m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ);print(hashlib.sha256(m[:]).hexdigest())',
    ]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe(shaOfFile(path.join(vs.paths.realTree, 'bin/perl')));
  });

  const programs: Array<[string, string[], RegExp, string[]]> = [
    ['python3 importing stdlib modules', ['/usr/bin/python3', '-c', 'import json, zlib, sqlite3, ssl; print(json.dumps(zlib.crc32(b"x")))'], /^\d+\n$/, ['bin/python3.11', 'lib/x86_64-linux-gnu/libc.so.6']],
    ['perl', ['/usr/bin/perl', '-MPOSIX', '-e', 'print floor(7.9), "\\n"'], /^7\n$/, ['bin/perl', 'lib/x86_64-linux-gnu/libc.so.6']],
    ['gcc compiling and running a C program', ['/bin/sh', '-c', 'gcc -O1 -o /tmp/t /tmp/t.c && /tmp/t'], /^42\n$/, ['bin/x86_64-linux-gnu-gcc-12', 'lib/x86_64-linux-gnu/libc.so.6']],
  ];

  test.each(programs)('%s runs in the chroot, and its second run comes from flash', async (_label, argv, expected, filled) => {
    fs.writeFileSync(path.join(vs.sandbox.root, 'tmp', 't.c'), '#include <stdio.h>\nint main(void) { printf("%d\\n", 6 * 7); return 0; }\n');
    const first = await runInChroot(vs.sandbox, argv);
    expect({ code: first.code, stderr: first.stderr }).toEqual({ code: 0, stderr: '' });
    expect(first.stdout).toMatch(expected);
    // The first run started background copies of its libraries and executables.
    const index = () => StoreIndex.open(vs.paths.index, silentLogger, { readonly: true });
    const allFilled = () => {
      const ix = index();
      try {
        return filled.every((rel) => ix.get(rel) !== undefined);
      } finally {
        ix.close();
      }
    };
    expect(await waitFor(allFilled, 20000, 100)).toBeGreaterThanOrEqual(0);
    const hitsOf = () => {
      const ix = index();
      try {
        return filled.map((rel) => ix.get(rel)?.hits ?? 0);
      } finally {
        ix.close();
      }
    };
    const before = hitsOf();
    // The kernel forgets pages, dentries and inodes, so the second run's reads reach the view
    // (with the kernel session no open does, so hits are counted at the first read).
    execFileSync('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);
    const second = await runInChroot(vs.sandbox, argv);
    expect(second.code).toBe(0);
    expect(second.stdout).toMatch(expected);
    // Each file was opened from flash by the second run: its hit count in the index grew.
    // Hits reach the index in batches (access_flush_ms = 200).
    const grew = () => hitsOf().every((h, i) => h > before[i]);
    expect(await waitFor(grew, 3000, 100)).toBeGreaterThanOrEqual(0);
  });

  test('status --json agrees with the mount table and the index', async () => {
    const { execFileSync } = await import('child_process');
    let out = '';
    try {
      out = execFileSync(process.execPath, [path.resolve('dist/cli/main.js'), '--root', vs.sandbox.root, 'status', '--json'], { encoding: 'utf8' });
    } catch (err) {
      out = String((err as { stdout?: string }).stdout);
    }
    const report = JSON.parse(out);
    expect(report.view.mounted).toBe(fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${vs.paths.viewMount} `));
    expect(report.view.mounted).toBe(true);
    expect(report.view.pid).toBe(vs.view!.child.pid);
    expect(report.store.entries).toBeGreaterThan(0);
    expect(report.link.target).toBe(fs.readlinkSync(vs.paths.usrLink));
  });
});
