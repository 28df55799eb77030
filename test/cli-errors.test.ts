/** Bad input: one clear line, the documented exit code, nothing changed, nothing lost. */
import { execFileSync, spawnSync } from 'child_process';
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CLI_ENTRY } from '../fs/service/view-process';
import { isMountPoint } from '../fs/service/preflight';
import { EXIT_CODES, EXIT_MEANINGS } from '../core/errors';
import { createViewSandbox, fuseAvailable, ViewSandbox, waitFor } from './helpers/view-sandbox';

function cli(args: string[], options: { prefix?: string[] } = {}): { code: number | null; stdout: string; stderr: string } {
  const argv = [...(options.prefix ?? []), process.execPath, CLI_ENTRY, ...args];
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', timeout: 30000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('usage errors', () => {
  let root: string;
  beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-cli-'));
    fs.mkdirSync(path.join(root, 'etc'));
  });
  afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

  test("exit codes have one home (core/errors.ts): the README's table and --help list exactly those", () => {
    const readme = fs.readFileSync(path.join(__dirname, '..', 'README.md'), 'utf8');
    const table = readme.slice(readme.indexOf('### Exit codes'));
    const inReadme = [...table.slice(0, table.indexOf('\n## ')).matchAll(/^\| (\d+) \|/gm)].map((m) => Number(m[1]));
    const codes = Object.values(EXIT_CODES).sort((a, b) => a - b);
    expect(inReadme).toEqual(codes);
    const help = cli(['--help']).stdout;
    for (const [kind, code] of Object.entries(EXIT_CODES)) expect(help).toContain(`${code}  ${EXIT_MEANINGS[kind as keyof typeof EXIT_CODES]}`);
  });

  test('--version, -V and version print the package version and exit 0', () => {
    const version = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')).version;
    for (const flag of ['--version', '-V', 'version']) expect(cli([flag])).toMatchObject({ code: 0, stdout: `${version}\n` });
  });

  test('an unknown verb or option exits 2', () => {
    expect(cli(['frobnicate']).code).toBe(2);
    expect(cli(['status', '--bogus']).code).toBe(2);
  });

  test('a bad config key exits 2 naming the key and the allowed values', () => {
    fs.writeFileSync(path.join(root, 'etc', 'fscache.conf'), 'mode = turbo\n');
    const r = cli(['--root', root, 'status']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/fscache: .*fscache.conf:1: bad value 'turbo' for mode: allowed: view, mirror\n$/);
  });

  test('status of a root where nothing runs exits 7 (stopped)', () => {
    const r = cli(['--root', root, 'status', '--json']);
    expect(r.code).toBe(7);
    expect(JSON.parse(r.stdout).health).toBe('stopped');
  });

  test('a missing real tree exits 5 and creates nothing', () => {
    const r = cli(['--root', root, 'mount']);
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/the real tree .*usr.real is missing/);
    expect(fs.readdirSync(root)).toEqual(['etc']);
  });

  test('a real tree that is the view itself is refused', () => {
    fs.mkdirSync(path.join(root, 'usr.view'), { recursive: true });
    fs.writeFileSync(path.join(root, 'etc', 'fscache.conf'), 'real_tree = usr.view\n');
    const r = cli(['--root', root, 'mount']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/overlaps the view's mount point/);
  });
});

const skip = fuseAvailable();
const maybe = skip ? describe.skip : describe;
if (skip) console.warn(`mount error tests skipped: ${skip}`);

maybe('mount-time errors', () => {
  let vs: ViewSandbox | undefined;
  afterEach(async () => {
    if (vs && isMountPoint(vs.paths.flash)) execFileSync('umount', ['-l', vs.paths.flash]);
    await vs?.dispose();
    vs = undefined;
  });

  test('no /dev/fuse exits 5 (a mount namespace whose /dev lacks it)', () => {
    const hasUnshare = spawnSync('unshare', ['--help']).status === 0;
    if (!hasUnshare) return console.warn('skipped: unshare(1) missing');
    vs = createViewSandbox({ copy: true });
    const r = cli(['--root', vs.sandbox.root, 'mount'], {
      prefix: ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', 'mount -t tmpfs none /dev && exec "$@"', 'sh'],
    });
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/\/dev\/fuse is missing/);
  });

  test('a mount point in use by a running view exits 6; the running view is untouched', async () => {
    vs = createViewSandbox({ copy: true });
    fs.writeFileSync(path.join(vs.paths.realTree, 'marker'), 'here');
    await vs.startView();
    const r = cli(['--root', vs.sandbox.root, 'mount']);
    expect(r.code).toBe(6);
    expect(r.stderr).toMatch(/already mounted/);
    expect(fs.readFileSync(vs.inView('marker'), 'utf8')).toBe('here');
  });

  test('a non-empty mount point exits 6 and its files stay', () => {
    vs = createViewSandbox({ copy: true });
    fs.mkdirSync(vs.paths.viewMount, { recursive: true });
    fs.writeFileSync(path.join(vs.paths.viewMount, 'precious'), 'keep me');
    const r = cli(['--root', vs.sandbox.root, 'mount']);
    expect(r.code).toBe(6);
    expect(r.stderr).toMatch(/not empty/);
    expect(fs.readFileSync(path.join(vs.paths.viewMount, 'precious'), 'utf8')).toBe('keep me');
    fs.rmSync(path.join(vs.paths.viewMount, 'precious'));
  });

  test('a full flash store: files are still served right, status says degraded (exit 4)', async () => {
    vs = createViewSandbox({ copy: true, config: 'access_flush_ms = 100\n' });
    fs.mkdirSync(vs.paths.flash, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k,mode=700', 'fscache-test-flash', vs.paths.flash]);
    const big = randomBytes(1024 * 1024);
    fs.mkdirSync(path.join(vs.paths.realTree, 'lib'));
    fs.writeFileSync(path.join(vs.paths.realTree, 'lib', 'libbig.so'), big);
    await vs.startView();
    expect(fs.readFileSync(vs.inView('lib/libbig.so')).equals(big)).toBe(true);
    expect(await waitFor(() => (vs!.view!.state()?.store?.fillFailures ?? 0) > 0, 5000)).toBeGreaterThanOrEqual(0);
    expect(fs.readFileSync(vs.inView('lib/libbig.so')).equals(big)).toBe(true);
    const r = cli(['--root', vs.sandbox.root, 'status', '--json']);
    expect(r.code).toBe(4);
    expect(JSON.parse(r.stdout).problems.join()).toMatch(/flash store (ENOSPC|SQLITE_FULL)/);
    expect(fs.readdirSync(vs.paths.storePartial)).toEqual([]);
  });
});
