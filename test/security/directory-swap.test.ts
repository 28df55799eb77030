/**
 * Issue 14, finding 2: a directory swap must not lead the view out of the real tree.
 *
 * The attack, run as nobody (setpriv --reuid=65534 --regid=65534 --clear-groups) from the
 * host side: nobody owns one directory of the real tree (pub), holds pub/a/sub through the
 * view as its working directory, renames pub/a away and puts a symlink to R/hidden there.
 * R/hidden/sub is root's and 0700 (nobody cannot search it natively) and holds a 0644 file.
 * The kernel keeps the held node (its attributes are nobody's 0755, so it lets nobody look
 * names up in it); a view that resolved `/pub/a/sub/secret` again by name, as root, read
 * R/hidden/sub/secret. The view resolves beneath its root through no symlink: READDIR, the
 * LOOKUP of a name below and the READ all fail, and nothing of R/hidden is disclosed.
 * Without any symlink: a root-owned 0700 directory in nobody's directory renamed over the held
 * node's parent leads the same name there. The kernel session looks names up only in the
 * directory object its node holds (ESTALE else); libfuse2's path-based API has no node
 * identity to check, so that case runs on the kernel session only.
 * Runs on the session FSCACHE_TEST_SESSION names (.ci/run runs it on both); every call bounded.
 */
import * as fs from 'fs';
import * as path from 'path';
import { runBounded } from '../helpers/bounded';
import { createViewSandbox, fuseAvailable, ViewSandbox } from '../helpers/view-sandbox';
import { afterEachDispose } from '../helpers/cleanup';

const skip = fuseAvailable() ?? (fs.existsSync('/usr/bin/setpriv') ? undefined : 'setpriv is missing');
const maybe = skip ? describe.skip : describe;
if (skip) console.warn(`directory-swap tests skipped: ${skip}`);

const NOBODY = 65534;
const SECRET = 'the-secret-bytes-of-a-0644-file-in-a-0700-dir';

/** The attacker's script: each step's output after a marker line, with its exit status. $SWAP replaces pub/a. */
const ATTACK = `
cd "$VIEW/pub/a/sub" || exit 10
echo "== before"; cat mine
mv "$REAL/pub/a" "$REAL/pub/a.old" && eval "$SWAP" || exit 11
echo "== readdir"; ls -a 2>&1; echo "status $?"
echo "== lookup"; stat -c '%s %i %U' secret 2>&1; echo "status $?"
echo "== read"; cat secret 2>&1; echo "status $?"
echo "== read by path"; cat "$VIEW/pub/a/sub/secret" 2>&1; echo "status $?"
`;

/**
 * Builds the tree, runs ATTACK as nobody with `swap` putting the secret's directory at pub/a
 * (`hiddenAt`: where R/hidden's sub/secret lives, inside or outside the real tree), and
 * checks that nothing of it came through the view.
 */
async function attack(vs: ViewSandbox, hiddenAt: string, swap: string): Promise<void> {
  const root = vs.sandbox.root;
  const real = vs.paths.realTree;
  // mkdtemp made R 0700: the attacker must reach the view and the real tree, as on a machine.
  fs.chmodSync(root, 0o755);
  fs.chmodSync(real, 0o755);
  fs.mkdirSync(path.join(real, 'pub/a/sub'), { recursive: true });
  fs.writeFileSync(path.join(real, 'pub/a/sub/mine'), 'mine\n');
  for (const p of ['pub', 'pub/a', 'pub/a/sub', 'pub/a/sub/mine']) fs.chownSync(path.join(real, p), NOBODY, NOBODY);
  // Root's: a 0644 file, and a name nobody types, below a 0700 directory nobody cannot search.
  const hidden = path.join(hiddenAt, 'hidden');
  fs.mkdirSync(path.join(hidden, 'sub'), { recursive: true });
  fs.chmodSync(hidden, 0o700);
  fs.writeFileSync(path.join(hidden, 'sub', 'secret'), SECRET, { mode: 0o644 });
  fs.writeFileSync(path.join(hidden, 'sub', 'only-listed-name'), '', { mode: 0o644 });
  await vs.startView();

  const asNobody = ['--reuid=' + NOBODY, '--regid=' + NOBODY, '--clear-groups'];
  const env = { PATH: '/usr/bin:/bin', VIEW: vs.paths.viewMount, REAL: real, HIDDEN: hidden, SWAP: swap };
  // Natively nobody cannot read it: the view must not do better.
  const native = await runBounded('/usr/bin/setpriv', [...asNobody, 'cat', path.join(hidden, 'sub', 'secret')], { abortBelow: root, env, timeoutMs: 10000 });
  expect(native.code).not.toBe(0);

  const r = await runBounded('/usr/bin/setpriv', [...asNobody, 'sh', '-c', ATTACK], { abortBelow: root, env, timeoutMs: 30000 });
  expect(r.timedOut).toBe(false);
  const out = r.stdout;
  // The hold worked and the swap was made: the attack really ran against the view.
  expect(out).toMatch(/== before\nmine\n/);
  expect(r.code).toBe(0);
  // Nothing of R/hidden/sub: no content, no name, no size or inode.
  expect(out).not.toContain(SECRET);
  expect(out).not.toContain('only-listed-name');
  const section = (name: string) => out.split(`== ${name}\n`)[1].split('\n== ')[0];
  // No listing was read before the swap (the kernel would keep it): this READDIR reaches the view.
  expect(section('readdir')).toMatch(/status [1-9]/);
  expect(section('lookup')).toMatch(/status [1-9]/);
  expect(section('lookup')).not.toContain(String(SECRET.length));
  expect(section('read')).toMatch(/status [1-9]/);
  expect(section('read by path')).toMatch(/status [1-9]/);
  // The view is still up and serves the tree (the held directory under its new name).
  const after = await runBounded('cat', [path.join(vs.paths.viewMount, 'pub/a.old/sub/mine')], { abortBelow: root, timeoutMs: 10000 });
  expect(after.stdout).toBe('mine\n');
}

maybe('a directory swapped while held through the view (finding 2)', () => {
  let vs: ViewSandbox | undefined;
  afterEachDispose(() => vs, () => (vs = undefined));

  test('for a symlink to a host path: nobody reads, lists and looks up nothing there', async () => {
    vs = createViewSandbox({ copy: true });
    await attack(vs, vs.sandbox.root, 'ln -s "$HIDDEN" "$REAL/pub/a"');
  });

  // libfuse2 names nodes by path only: no identity to check a held directory against.
  const kernelOnly = process.env.FSCACHE_TEST_SESSION === 'libfuse2' ? test.skip : test;
  kernelOnly('for a root-owned 0700 directory of the tree renamed over it (kernel session): nothing of it either', async () => {
    vs = createViewSandbox({ copy: true });
    fs.mkdirSync(path.join(vs.paths.realTree, 'pub'));
    // nobody may rename root's directory within nobody's own pub (same parent, no sticky bit).
    await attack(vs, path.join(vs.paths.realTree, 'pub'), 'mv "$HIDDEN" "$REAL/pub/a"');
  });
});
