/**
 * `fscache inspect` with many files and `--installed`: every shared library under a root's real
 * tree, with what to do about it, grouped by the package that owns it in the root's own database
 * (dpkg-query against R/var/lib/dpkg; an opkg root's info lists). Libraries built here with gcc.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const CLI = path.join(__dirname, '..', 'dist', 'cli', 'main.js');
const LIB_SOURCE = 'int a(int x) { return x + 1; }\nint b(int x) { return a(x) * 2; }\nint c(int x) { return b(x) - a(x); }\n';

function cli(root: string, ...args: string[]) {
  return spawnSync(process.execPath, [CLI, '--root', root, ...args], { encoding: 'utf8', timeout: 120000 });
}

/** R/usr.real/lib/demo: libgood (randomizable), libplain (no flags), a link to libgood, a non-ELF .so. */
function makeRoot(): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-inspect-'));
  const lib = path.join(root, 'usr.real/lib/demo');
  fs.mkdirSync(lib, { recursive: true });
  fs.mkdirSync(path.join(root, 'etc'));
  fs.symlinkSync('usr.real', path.join(root, 'usr'));
  const src = path.join(root, 'lib.c');
  fs.writeFileSync(src, LIB_SOURCE);
  execFileSync('gcc', ['-O2', '-fPIC', '-ffunction-sections', '-shared', '-Wl,--emit-relocs', '-o', path.join(lib, 'libgood.so.1'), src]);
  execFileSync('gcc', ['-O2', '-fPIC', '-shared', '-o', path.join(lib, 'libplain.so.2'), src]);
  fs.symlinkSync('libgood.so.1', path.join(lib, 'libgood.so'));
  fs.writeFileSync(path.join(lib, 'notelf.so'), 'not a library\n');
  return root;
}

let root = '';
afterEach(() => {
  if (root) fs.rmSync(root, { recursive: true, force: true });
  root = '';
});

test('--installed lists each library once, says what to do, and groups by the dpkg package that owns it', () => {
  root = makeRoot();
  fs.mkdirSync(path.join(root, 'var/lib/dpkg/info'), { recursive: true });
  fs.writeFileSync(path.join(root, 'var/lib/dpkg/status'),
    'Package: demo-libs\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\nMaintainer: fscache tests <root@localhost>\nDescription: demo\n\n');
  fs.writeFileSync(path.join(root, 'var/lib/dpkg/info/demo-libs.list'), '/usr\n/usr/lib\n/usr/lib/demo\n/usr/lib/demo/libplain.so.2\n');

  const r = cli(root, 'inspect', '--installed');
  expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
  // The package with work to do comes first; the link and the non-ELF file are not listed.
  expect(r.stdout.split('\n')).toEqual([
    'demo-libs: 0 of 1 randomizable',
    expect.stringMatching(/^ {2}\/usr\/lib\/demo\/libplain\.so\.2: not randomizable: .*--emit-relocs.* \(needs rebuilding with -ffunction-sections and -Wl,--emit-relocs\)$/),
    '(no package): 1 of 1 randomizable',
    expect.stringMatching(/^ {2}\/usr\/lib\/demo\/libgood\.so\.1: randomizable: \d+ units/),
    '2 libraries: 1 randomizable, 1 needs-rebuild, 0 stripped, 0 refused',
    '',
  ]);
  const j = JSON.parse(cli(root, 'inspect', '--installed', '--json').stdout);
  expect(j.counts).toEqual({ randomizable: 1, 'needs-rebuild': 1, stripped: 0, refused: 0 });
  expect(j.libraries.map((l: { path: string; package?: string; verdict: string }) => [l.path, l.package, l.verdict])).toEqual([
    ['/usr/lib/demo/libgood.so.1', undefined, 'randomizable'],
    ['/usr/lib/demo/libplain.so.2', 'demo-libs', 'needs-rebuild'],
  ]);
});

test('an opkg root: owners from its info lists', () => {
  root = makeRoot();
  fs.mkdirSync(path.join(root, 'var/lib/opkg/info'), { recursive: true });
  fs.writeFileSync(path.join(root, 'var/lib/opkg/info/libgood1.list'), '/usr/lib/demo/libgood.so.1\t0644\n/usr/lib/demo/libgood.so\t0777\n');
  const j = JSON.parse(cli(root, 'inspect', '--installed', '--json').stdout);
  expect(j.libraries.map((l: { package?: string }) => l.package)).toEqual(['libgood1', undefined]);
});

test('many files: each reported, an unreadable one named on stderr after the others, exit 2', () => {
  root = makeRoot();
  const lib = path.join(root, 'usr.real/lib/demo');
  const r = cli(root, 'inspect', path.join(lib, 'libgood.so.1'), path.join(root, 'missing.so'), path.join(lib, 'notelf.so'));
  expect(r.status).toBe(2);
  expect(r.stdout).toMatch(/libgood\.so\.1: randomizable/);
  expect(r.stdout).toMatch(/notelf\.so: not randomizable: bad magic/);
  expect(r.stdout).toMatch(/3 libraries: 1 randomizable, 0 needs-rebuild, 0 stripped, 1 refused, 1 unreadable/);
  expect(r.stderr).toMatch(/missing\.so: ENOENT/);
  expect(r.stderr).toMatch(/1 of 3 files could not be inspected/);
  // No argument and no --installed: a usage error.
  expect(cli(root, 'inspect')).toMatchObject({ status: 2, stderr: expect.stringMatching(/name at least one library, or --installed/) });
});
