/**
 * The package as a user gets it: `npm pack` of this tree, `npm install -g --prefix P` of the
 * tarball, then P/bin/fscache. The tree was built by `npm test` (the same `npm run build` that
 * `prepack` runs), so the tarball is packed with --ignore-scripts (a second 10-40 s build on a
 * shared machine buys nothing). The install runs the dependencies' install scripts not at all
 * (--ignore-scripts: better-sqlite3's compile takes ~95 s); what is checked is the package's own
 * files and that the CLI finds its auditor, guard and addon from where it was installed. npm's cache
 * answers (--offline); if it lacks the registry's metadata (a fresh cache after `npm ci`), the
 * install asks the registry for metadata only (--prefer-offline), and the test is skipped, with
 * the reason printed, when the registry cannot be reached either.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { REPO } from './elf/libs';

const pkg = JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')) as {
  version: string; files: string[]; scripts: Record<string, string>; engines: { node: string }; man: string[];
};

function sh(cmd: string, args: string[], timeoutMs: number, cwd = REPO) {
  return spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: timeoutMs, env: { ...process.env, npm_config_update_notifier: 'false' } });
}

describe('npm pack, npm install -g, fscache', () => {
  let tmp: string;
  let prefix: string;
  let installed: string;
  let packed: string[] = [];
  let skipped: string | undefined;

  beforeAll(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-pack-'));
    const pack = sh('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', tmp], 30000);
    if (pack.status !== 0) throw new Error(`npm pack: ${pack.stderr}`);
    const [info] = JSON.parse(pack.stdout) as Array<{ filename: string; files: Array<{ path: string }> }>;
    packed = info.files.map((f) => f.path);
    prefix = path.join(tmp, 'P');
    const tgz = path.join(tmp, info.filename);
    const install = (mode: string) => sh('npm', ['install', '-g', '--prefix', prefix, tgz, mode, '--ignore-scripts', '--no-audit', '--no-fund'], 60000, tmp);
    let r = install('--offline');
    if (r.status !== 0 && /ENOTCACHED/.test(r.stderr)) r = install('--prefer-offline');
    if (r.status !== 0 && /ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ETIMEDOUT|ENETUNREACH/.test(r.stderr)) {
      skipped = `npm's cache lacks the dependencies' metadata and the registry cannot be reached: ${r.stderr.split('\n')[0]}`;
      console.warn(`SKIP the installed package's checks: ${skipped}`);
      return;
    }
    if (r.status !== 0) throw new Error(`npm install -g: ${r.stderr}`);
    installed = path.join(prefix, 'lib', 'node_modules', 'fscache');
  }, 100000);

  afterAll(() => {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('package.json: engines admit Node 20 and later, prepack builds, a man page is declared', () => {
    expect(pkg.engines.node).toBe('>=20');
    expect(pkg.scripts.prepack).toBe('npm run --silent build');
    // The architecture-independent part builds without a C compiler for the target.
    expect(pkg.scripts.build).toBe('npm run --silent build:ts && npm run --silent build:c');
    expect(pkg.scripts['build:ts']).not.toMatch(/make|node-gyp/);
    expect(pkg.man).toEqual(['dist/doc/fscache.1']);
  });

  test('the tarball holds what runs and what rebuilds, and no tests, benchmarks or CI', () => {
    for (const f of ['bin/fscache', 'dist/cli/main.js', 'native/build/Release/arch', 'dist/doc/fscache.1', 'dist/doc/fscache.bash', 'loader-hook/fscache-audit.so', 'loader-hook/audit.c',
      'loader-hook/audit.map', 'loader-hook/Makefile', 'loader-hook/demo/hookdemo.c', 'guard/fscache-guard', 'guard/guard.c', 'guard/Makefile',
      'native/build/Release/fscache_native.node', 'native/fscache_native.c', 'native/binding.gyp', 'initscripts/systemd/fscache.service',
      'contrib/yocto/classes/fscache-randomizable.bbclass', 'contrib/gentoo/env/fscache-randomizable.conf', 'docs/DESIGN.md',
      'README.md', 'LICENSE', 'package.json']) {
      expect(packed).toContain(f);
    }
    const unwanted = packed.filter((f) => /^(dist\/)?(test|bench|\.ci|scripts|node_modules)\//.test(f) || (f.endsWith('.ts') && !f.endsWith('.d.ts')));
    expect(unwanted).toEqual([]);
  });

  test('P/bin/fscache --version and --help run from the installed place', () => {
    if (skipped) return;
    const v = sh(path.join(prefix, 'bin', 'fscache'), ['--version'], 20000, tmp);
    expect(v.stderr).toBe('');
    expect(v.status).toBe(0);
    expect(v.stdout.trim()).toBe(pkg.version);
    const h = sh(path.join(prefix, 'bin', 'fscache'), ['--help'], 20000, tmp);
    expect(h.status).toBe(0);
    expect(h.stdout).toMatch(/^Usage: fscache /);
    expect(h.stdout).toMatch(/Exit codes:/);
    expect(fs.existsSync(path.join(prefix, 'share', 'man', 'man1', 'fscache.1'))).toBe(true);
  });

  test('fscache inspect runs the randomizer from the installed place', () => {
    if (skipped) return;
    const r = sh(path.join(prefix, 'bin', 'fscache'), ['inspect', path.join(installed, 'loader-hook', 'fscache-audit.so')], 20000, tmp);
    expect(r.stderr).not.toMatch(/Cannot find module|at .*\.js:\d+/);
    expect(r.stdout + r.stderr).toMatch(/fscache-audit\.so/);
  });

  test('the installed CLI finds its auditor, guard and native addon beside itself, not in this tree', () => {
    if (skipped) return;
    const script = `
      const I = process.argv[1];
      const { PACKAGE_ROOT, CLI_ENTRY } = require(I + '/dist/core/package-root.js');
      const { BUILT_AUDITOR } = require(I + '/dist/loader-hook/env.js');
      const { NATIVE_ADDON, native } = require(I + '/dist/core/native.js');
      console.log(JSON.stringify({ PACKAGE_ROOT, CLI_ENTRY, BUILT_AUDITOR, NATIVE_ADDON, calls: Object.keys(native) }));`;
    const r = sh(process.execPath, ['-e', script, installed], 20000, tmp);
    expect(r.stderr).toBe('');
    const found = JSON.parse(r.stdout) as Record<string, string> & { calls: string[] };
    const real = fs.realpathSync(installed);
    expect(found.PACKAGE_ROOT).toBe(real);
    expect(found.CLI_ENTRY).toBe(path.join(real, 'dist', 'cli', 'main.js'));
    expect(found.BUILT_AUDITOR).toBe(path.join(real, 'loader-hook', 'fscache-audit.so'));
    expect(found.NATIVE_ADDON).toBe(path.join(real, 'native', 'build', 'Release', 'fscache_native.node'));
    expect(found.calls).toContain('openat2');
    for (const f of [found.BUILT_AUDITOR, found.NATIVE_ADDON, path.join(real, 'guard', 'fscache-guard')]) expect(fs.statSync(f).isFile()).toBe(true);
    expect(fs.statSync(path.join(real, 'guard', 'fscache-guard')).mode & 0o111).not.toBe(0);
  });

  test('its install script rebuilds the C parts only where they were built for another architecture', () => {
    if (skipped) return;
    const marker = path.join(installed, 'native', 'build', 'Release', 'arch');
    const auditor = path.join(installed, 'loader-hook', 'fscache-audit.so');
    expect(fs.readFileSync(marker, 'utf8').trim()).toBe(process.arch);
    const packedTime = fs.statSync(auditor).mtimeMs; // npm gives every file of a tarball one old date
    expect(sh('npm', ['run', '--silent', 'install'], 20000, installed).status).toBe(0);
    expect(fs.statSync(auditor).mtimeMs).toBe(packedTime); // same architecture: nothing rebuilt
    fs.writeFileSync(marker, 'arm64\n'); // as if packed on an aarch64 machine
    const r = sh('npm', ['run', '--silent', 'install'], 60000, installed);
    expect(r.status).toBe(0);
    expect(fs.readFileSync(marker, 'utf8').trim()).toBe(process.arch);
    expect(fs.statSync(auditor).mtimeMs).toBeGreaterThan(packedTime);
    expect(sh(path.join(prefix, 'bin', 'fscache'), ['--version'], 20000, tmp).stdout.trim()).toBe(pkg.version);
  }, 90000);
});
