/**
 * The auditor on another architecture: cross-built for aarch64 (Debian's gcc-aarch64-linux-gnu) and
 * run by the real aarch64 ld.so under qemu-user (`qemu-aarch64 -L /usr/aarch64-linux-gnu`, whose
 * libc6-arm64-cross provides the loader and libc). First with no epoch (the auditor must load and
 * let every original through, silently), then with an epoch whose image directory holds an image
 * keyed by the library's identity: the program must run the image's code, which checks the aarch64
 * syscall wrappers and struct stat layout (dev, ino, size, mtime) end to end.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { identityOf } from '../core/identity';
import { CLI_ENTRY } from '../core/package-root';
import { keyOf } from '../loader-hook/images';
import { announceSkip, REPO } from './elf/libs';

describe('the architecture-independent core', () => {
  test('the view with the kernel session (the default) loads no fuse-native, whose prebuilt addon is x64-only', () => {
    const script = `for (const m of ['fs/view/view-service', 'cli/mount', 'cli/ops', 'fs/service/supervisor']) require(${JSON.stringify(path.join(REPO, 'dist'))} + '/' + m + '.js');
      console.log(JSON.stringify(Object.keys(require.cache).filter((k) => /fuse-native|session-libfuse2/.test(k))));`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20000 });
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual([]);
  });
});

const CROSS_CC = 'aarch64-linux-gnu-gcc';
const SYSROOT = '/usr/aarch64-linux-gnu';

function missingTools(): string | undefined {
  for (const tool of [CROSS_CC, 'qemu-aarch64']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`], { timeout: 5000 }).status !== 0) return `${tool} not installed (scripts/setup.sh installs gcc-aarch64-linux-gnu and qemu-user)`;
  }
  if (!fs.existsSync(path.join(SYSROOT, 'lib', 'ld-linux-aarch64.so.1'))) return `${SYSROOT}/lib/ld-linux-aarch64.so.1 missing (libc6-arm64-cross)`;
  return undefined;
}

const skip = missingTools();
if (skip) announceSkip('aarch64 auditor tests', skip);
const run = skip ? describe.skip : describe;

function must(cmd: string, args: string[], cwd?: string): void {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 60000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status}\n${r.stdout}${r.stderr}`);
}

run('the auditor on aarch64 (cross-built, run under qemu-user)', () => {
  let root: string;
  let auditor: string;
  let prog: string;
  let lib: string;

  // qemu-user passes the environment to the guest; the host's own LD_* must not leak into it.
  const qemu = (extraEnv: string[]) =>
    spawnSync('qemu-aarch64', ['-L', SYSROOT, ...extraEnv.flatMap((e) => ['-E', e]), prog], { encoding: 'utf8', timeout: 30000 });

  beforeAll(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-arch-'));
    fs.chmodSync(root, 0o755);
    const libDir = path.join(root, 'opt', 'lib');
    fs.mkdirSync(libDir, { recursive: true, mode: 0o755 });
    // The auditor for root R, as `make ARCH=aarch64` builds it (the TypeScript build does not need it).
    auditor = path.join(root, 'fscache-audit.so');
    must('make', ['-s', '-C', path.join(REPO, 'loader-hook'), 'ARCH=aarch64', `ROOT=${root}`, `OUT=${auditor}`]);
    const src = (name: string, text: string) => {
      const f = path.join(root, name);
      fs.writeFileSync(f, text);
      return f;
    };
    lib = path.join(libDir, 'libtriple.so');
    must(CROSS_CC, ['-shared', '-fPIC', '-Wl,-soname,libtriple.so', '-o', lib, src('triple.c', 'int triple(int x) { return 3 * x; }\n')]);
    // The "image": same SONAME and symbol, different code, so the output says which one ran.
    must(CROSS_CC, ['-shared', '-fPIC', '-Wl,-soname,libtriple.so', '-o', path.join(root, 'image.so'), src('image.c', 'int triple(int x) { return 4 * x; }\n')]);
    prog = path.join(root, 'prog');
    must(CROSS_CC, ['-o', prog, src('prog.c', `#include <stdio.h>
#include <string.h>
int triple(int);
int main(void) {
  char line[512];
  FILE *f = fopen("/proc/self/maps", "r");
  while (f && fgets(line, sizeof line, f)) if (strstr(line, "${root}/")) fputs(line, stdout);
  printf("triple(14)=%d\\n", triple(14));
  return 0;
}
`), `-L${libDir}`, '-ltriple', `-Wl,-rpath,${libDir}`]);
  }, 120000);

  afterAll(() => {
    if (root) fs.rmSync(root, { recursive: true, force: true });
  });

  test('the cross-built auditor is an aarch64 object with no libc', () => {
    const head = fs.readFileSync(auditor).subarray(0, 20);
    expect(head.readUInt16LE(18)).toBe(183); // EM_AARCH64
    const r = spawnSync('aarch64-linux-gnu-readelf', ['-d', auditor], { encoding: 'utf8', timeout: 10000 });
    expect(r.status).toBe(0);
    expect(r.stdout).not.toMatch(/NEEDED/);
  });

  test('with no epoch the auditor loads (la_version accepted it) and lets the original through, silently', () => {
    const plain = qemu([]);
    expect(plain.status).toBe(0);
    expect(plain.stdout).toMatch(/triple\(14\)=42/);
    const r = qemu([`LD_AUDIT=${auditor}`]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/triple\(14\)=42/);
    // Mapped for the program's whole life: ld.so unloads an auditor whose la_version returned 0.
    expect(r.stdout).toContain(auditor);
    expect(r.stdout).toContain(lib);
  });

  test('the randomizer refuses an aarch64 library with its reason', () => {
    const r = spawnSync(process.execPath, [CLI_ENTRY, 'inspect', lib], { encoding: 'utf8', timeout: 20000 });
    expect(r.stdout + r.stderr).toMatch(/not randomizable: not x86-64 \(e_machine 183\)/);
  });

  test('with an epoch, the library is served as the image keyed by its identity', () => {
    const epoch = 'e1';
    const images = path.join(root, 'fscache', 'images', epoch);
    fs.mkdirSync(images, { recursive: true, mode: 0o755 });
    fs.chmodSync(path.join(root, 'fscache'), 0o711);
    const image = path.join(images, `${keyOf(identityOf(fs.statSync(lib, { bigint: true })))}.so`);
    fs.copyFileSync(path.join(root, 'image.so'), image);
    fs.chmodSync(image, 0o444);
    // The daemon's seal (mtime = size): an image without it is taken for a truncated one and not used.
    const { size } = fs.statSync(image);
    fs.utimesSync(image, size, size);
    fs.mkdirSync(path.join(root, 'run', 'fscache'), { recursive: true, mode: 0o755 });
    // The epoch file's fields as loader-hook/images.ts writes them: no daemon socket, so a miss loads the original.
    fs.writeFileSync(path.join(root, 'run', 'fscache', 'epoch'), `${epoch} original 0 fscache/images opt/lib usr.real usr.view\n`, { mode: 0o644 });
    const r = qemu([`LD_AUDIT=${auditor}`]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/triple\(14\)=56/);
    expect(r.stdout).toContain(image);
    expect(r.stdout).not.toContain(lib);
  });
});
