/**
 * Trust only root-owned state (issue 14, finding 1): a config, store or index that someone
 * other than root can write, or a symlink in their place, is never used. The config is
 * refused with exit 3 naming what is wrong; a store is refused by the view, which then
 * serves the real tree (fail open) and says why. The attacker's steps run as nobody (setpriv);
 * the administrator's mistake that makes them possible is set up by root.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CLI_ENTRY } from '../../core/package-root';
import { createViewSandbox, fuseAvailable, ViewSandbox } from '../helpers/view-sandbox';
import { afterEachDispose } from '../helpers/cleanup';

const NOBODY = 65534;

/** A shell command as nobody, bounded. */
function asNobody(script: string): { status: number | null; stderr: string } {
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '/bin/sh', '-c', script], { encoding: 'utf8', timeout: 20000 });
  return { status: r.status, stderr: r.stderr };
}

function cli(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI_ENTRY, ...args], { encoding: 'utf8', timeout: 30000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const asRoot = process.getuid?.() === 0;
(asRoot ? describe : describe.skip)('the config is trusted only if root alone can write it', () => {
  let root: string;
  let conf: string;
  beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-trust-'));
    fs.mkdirSync(path.join(root, 'etc'));
    conf = path.join(root, 'etc', 'fscache.conf');
    fs.writeFileSync(conf, 'mode = view\n');
  });
  afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

  test('a root-owned 0644 config is used', () => {
    expect(cli(['--root', root, 'status', '--json']).code).toBe(7);
  });

  test('finding 1 as nobody: a config left writable by others, pointed by nobody at a store of their own, is refused with exit 3', () => {
    fs.chmodSync(root, 0o755);
    fs.chmodSync(conf, 0o666); // the administrator's mistake
    const theirs = path.join(root, 'tmp-theirs');
    fs.mkdirSync(theirs, { mode: 0o1777 });
    fs.chmodSync(theirs, 0o1777);
    const planted = asNobody(`mkdir -p ${theirs}/store/bin && printf x > ${theirs}/store/bin/su && printf 'store_dir = ${theirs}\n' >> ${conf}`);
    expect(planted.status).toBe(0);
    expect(fs.readFileSync(conf, 'utf8')).toMatch(/store_dir/);
    for (const verb of [['status'], ['start']]) {
      const r = cli(['--root', root, ...verb]);
      expect(r).toMatchObject({ code: 3, stderr: expect.stringMatching(/fscache.conf is writable by others \(mode 666\)/) });
    }
  });

  test('writable by others, owned by another user, or in a directory others can write: refused with exit 3', () => {
    fs.chmodSync(conf, 0o666);
    let r = cli(['--root', root, 'status']);
    expect(r).toMatchObject({ code: 3, stderr: expect.stringMatching(/fscache.conf is writable by others \(mode 666\): fscache trusts only root-owned state/) });
    fs.chmodSync(conf, 0o644);
    fs.chownSync(conf, NOBODY, NOBODY);
    r = cli(['--root', root, 'status']);
    expect(r).toMatchObject({ code: 3, stderr: expect.stringMatching(/fscache.conf is owned by uid 65534, not root/) });
    fs.chownSync(conf, 0, 0);
    fs.chmodSync(path.join(root, 'etc'), 0o777);
    r = cli(['--root', root, 'status']);
    expect(r).toMatchObject({ code: 3, stderr: expect.stringMatching(/etc is writable by others/) });
  });

  test('a symlink in the config\'s place is refused, not followed', () => {
    const elsewhere = path.join(root, 'their.conf');
    fs.renameSync(conf, elsewhere);
    fs.symlinkSync(elsewhere, conf);
    const r = cli(['--root', root, 'status']);
    expect(r).toMatchObject({ code: 3, stderr: expect.stringMatching(/fscache.conf is a symbolic link/) });
  });
});

const skipView = fuseAvailable();
(skipView ? describe.skip : describe)('a store others could write is not used', () => {
  let vs: ViewSandbox | undefined;
  afterEachDispose(() => vs, () => (vs = undefined));

  test('finding 1 as nobody: a store made by nobody (R/fscache left writable by all) is not used: the view serves the real tree and says why', async () => {
    vs = createViewSandbox();
    const { paths } = vs;
    fs.chmodSync(vs.sandbox.root, 0o755);
    fs.mkdirSync(paths.flash, { recursive: true });
    fs.chmodSync(paths.flash, 0o1777); // the administrator's mistake
    // nobody makes the store before fscache does, with a copy of their own under a real file's name.
    expect(asNobody(`mkdir -p ${paths.store}/bin && cp /bin/false ${paths.store}/bin/true && chmod 700 ${paths.store}`).status).toBe(0);
    expect(fs.statSync(paths.store).uid).toBe(NOBODY);
    const view = await vs.startView();
    expect(view.state()?.storeTrouble).toMatch(/(owned by uid 65534, not root|writable by others).*serving the real tree only/);
    // Still serving: the real tree's bytes.
    expect(fs.readFileSync(vs.inView('bin/true')).equals(fs.readFileSync(path.join(paths.realTree, 'bin', 'true')))).toBe(true);
  });
});
