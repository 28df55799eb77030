/**
 * Issue 14, finding 9: names through the view resolve as they do natively.
 *
 * - A relative symlink that leaves /usr (`../../../etc/x` from usr/lib/x) leads where it
 *   does natively: the view is mounted at R/usr.view, beside R/usr.real, and R/usr -> usr.view,
 *   so the kernel resolves the link's `..` from the view's own directories to R's.
 * - A directory chain deeper than PATH_MAX (4096 bytes) made in the real tree is reached step
 *   by step (`cd -P` of one relative name at a time, as a shell would) and a file at its bottom
 *   is read and listed, as natively: the view then names paths longer than any one system call
 *   takes, and resolves them in pieces (fs/view/real-tree.ts).
 * Runs on the session FSCACHE_TEST_SESSION names (.ci/run runs it on both); every call through
 * the view is a bounded child process.
 */
import * as fs from 'fs';
import * as path from 'path';
import { runBounded } from '../helpers/bounded';
import { createViewSandbox, fuseAvailable, ViewSandbox } from '../helpers/view-sandbox';

const skip = fuseAvailable();
const maybe = skip ? describe.skip : describe;
if (skip) console.warn(`path tests skipped: ${skip}`);

/** 24 levels of 200-byte names: 4824 bytes below the tree's root. */
const LEVELS = 24;
const levelName = (i: number) => `${String(i).padStart(3, '0')}-${'d'.repeat(196)}`;
const NAMES = Array.from({ length: LEVELS }, (_, i) => levelName(i)).join(' ');

/** Walks $NAMES from $START one relative `cd -P` at a time, then reads and lists the bottom. */
const WALK = `
cd -P "$START" || exit 10
for n in $NAMES; do cd -P "$n" || exit 11; done
cat bottom || exit 12
ls || exit 13
`;

maybe('names through the view as natively (finding 9)', () => {
  let vs: ViewSandbox | undefined;
  afterEach(async () => {
    // Deeper than fs.rmSync reaches (ENAMETOOLONG): rm -r walks it relative to descriptors.
    if (vs) await runBounded('rm', ['-rf', '--one-file-system', path.join(vs.paths.realTree, 'deep')], { abortBelow: vs.sandbox.root, timeoutMs: 15000 });
    await vs?.dispose();
    vs = undefined;
  });

  test('a relative link leaving /usr leads through R/usr -> usr.view where it leads natively', async () => {
    vs = createViewSandbox({ copy: true });
    const root = vs.sandbox.root;
    const real = vs.paths.realTree;
    fs.writeFileSync(path.join(root, 'etc', 'outside-usr'), 'outside\n');
    fs.mkdirSync(path.join(real, 'lib', 'x'), { recursive: true });
    fs.symlinkSync('../../../etc/outside-usr', path.join(real, 'lib', 'x', 'up'));
    await vs.startView();
    // R/usr is the link programs go through (R/usr -> usr.view, the view's mount point).
    expect(fs.readlinkSync(path.join(root, 'usr'))).toBe(path.basename(vs.paths.viewMount));

    const env = { PATH: '/usr/bin:/bin' };
    const viaUsr = path.join(root, 'usr', 'lib', 'x', 'up');
    const natively = path.join(real, 'lib', 'x', 'up');
    const through = await runBounded('sh', ['-c', 'readlink "$1" && cat "$1" && realpath "$1"', 'sh', viaUsr], { abortBelow: root, env, timeoutMs: 15000 });
    const native = await runBounded('sh', ['-c', 'readlink "$1" && cat "$1" && realpath "$1"', 'sh', natively], { abortBelow: root, env, timeoutMs: 15000 });
    expect(through.stderr).toBe('');
    expect(through.code).toBe(0);
    expect(native.code).toBe(0);
    expect(through.stdout).toBe(native.stdout);
    expect(through.stdout).toBe(`../../../etc/outside-usr\noutside\n${path.join(root, 'etc', 'outside-usr')}\n`);
  });

  test('a directory chain deeper than 4096 bytes is walked step by step and its bottom read', async () => {
    vs = createViewSandbox({ copy: true });
    const root = vs.sandbox.root;
    const real = vs.paths.realTree;
    fs.mkdirSync(path.join(real, 'deep'));
    const env = { PATH: '/usr/bin:/bin', NAMES };
    // Made natively the way it is read: one relative mkdir and cd at a time.
    const make = await runBounded('sh', ['-c', 'cd -P "$1" || exit 10; for n in $NAMES; do mkdir "$n" && cd -P "$n" || exit 11; done; echo bottom-bytes > bottom', 'sh', path.join(real, 'deep')], { abortBelow: root, env, timeoutMs: 15000 });
    expect(make.stderr).toBe('');
    expect(make.code).toBe(0);
    expect(Buffer.byteLength(NAMES) + 1 + 'deep/bottom'.length).toBeGreaterThan(4096);
    await vs.startView();

    const native = await runBounded('sh', ['-c', WALK], { abortBelow: root, env: { ...env, START: path.join(real, 'deep') }, timeoutMs: 15000 });
    expect(native.stdout).toBe('bottom-bytes\nbottom\n');
    const through = await runBounded('sh', ['-c', WALK], { abortBelow: root, env: { ...env, START: vs.inView('deep') }, timeoutMs: 30000 });
    expect(through.stderr).toBe('');
    expect(through.code).toBe(0);
    expect(through.stdout).toBe(native.stdout);
  });
});
