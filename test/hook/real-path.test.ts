/** realTreePath (names on the real tree's side of the link, never through the view) and the bounded refusal record. */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { defaultConfig } from '../../core/config';
import { makeLogger } from '../../core/log';
import { derivePaths, Paths } from '../../core/paths';
import { realTreePath, RealPathError } from '../../loader-hook/real-path';
import { readRefusals, RefusalLog } from '../../loader-hook/refusals';

let root: string;
let paths: Paths;
beforeEach(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-realpath-'));
  paths = derivePaths(root, defaultConfig());
  fs.mkdirSync(path.join(paths.realTree, 'lib', 'sub'), { recursive: true });
  fs.writeFileSync(path.join(paths.realTree, 'lib', 'x.so'), '');
  fs.symlinkSync('x.so', path.join(paths.realTree, 'lib', 'x.so.1'));
  fs.symlinkSync(path.relative(root, paths.viewMount), paths.usrLink);
  fs.symlinkSync('usr/lib', path.join(root, 'lib'));
  // The view's mount point as a plain file: a resolution that entered it would fail with ENOTDIR.
  fs.mkdirSync(path.dirname(paths.viewMount), { recursive: true });
  fs.writeFileSync(paths.viewMount, '');
});
afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

const code = (name: string) => {
  try {
    realTreePath(paths, name);
    return 'resolved';
  } catch (e) {
    return (e as RealPathError).code;
  }
};

test('every name of a library, through the link or the view, is the real tree\'s file', () => {
  const want = path.join(paths.realTree, 'lib', 'x.so');
  const viewName = '/' + path.relative(root, paths.viewMount);
  for (const name of ['/usr/lib/x.so', '/lib/x.so', '/lib/x.so.1', `${viewName}/lib/x.so`, '/usr/lib/sub/../x.so', '/usr.real/lib/x.so']) {
    expect([name, realTreePath(paths, name)]).toEqual([name, want]);
  }
  // The link pointing at the real tree changes nothing.
  fs.rmSync(paths.usrLink);
  fs.symlinkSync('usr.real', paths.usrLink);
  expect(realTreePath(paths, '/lib/x.so.1')).toBe(want);
});

test('links resolve inside R, never above it; loops and dead ends are errors', () => {
  fs.mkdirSync(path.join(root, 'opt'));
  fs.writeFileSync(path.join(root, 'opt', 'y.so'), '');
  fs.symlinkSync('/opt/y.so', path.join(paths.realTree, 'lib', 'abs.so'));
  expect(realTreePath(paths, '/usr/lib/abs.so')).toBe(path.join(root, 'opt', 'y.so'));
  fs.symlinkSync('../../../../../../opt/y.so', path.join(paths.realTree, 'lib', 'up.so'));
  expect(realTreePath(paths, '/usr/lib/up.so')).toBe(path.join(root, 'opt', 'y.so'));
  expect(realTreePath(paths, '/../../opt/y.so')).toBe(path.join(root, 'opt', 'y.so'));
  fs.symlinkSync('loop.so', path.join(paths.realTree, 'lib', 'loop.so'));
  expect(code('/usr/lib/loop.so')).toBe('ELOOP');
  expect(code('/usr/lib/none.so')).toBe('ENOENT');
  expect(code('/usr/lib/x.so/y')).toBe('ENOTDIR');
  expect(code('usr/lib/x.so')).toBe('EOUTSIDE');
});

test('R/usr as a real directory (before setup) is itself', () => {
  fs.rmSync(paths.usrLink);
  fs.mkdirSync(path.join(paths.usrLink, 'lib'), { recursive: true });
  fs.writeFileSync(path.join(paths.usrLink, 'lib', 'z.so'), '');
  expect(realTreePath(paths, '/usr/lib/z.so')).toBe(path.join(paths.usrLink, 'lib', 'z.so'));
});

test('refusals: counted per library and reason, bounded in memory, on disk and in the log', () => {
  const file = path.join(root, 'refusals.json');
  const lines: string[] = [];
  const log = new RefusalLog(file, makeLogger('info', (l) => lines.push(l)));
  log.record('/usr.real/lib/a.so', 'outside the configured library directories', 1000);
  log.record('/usr.real/lib/a.so', 'outside the configured library directories', 2000);
  expect(log.list()).toEqual([{ library: '/usr.real/lib/a.so', reason: 'outside the configured library directories', count: 2, first: 1000, last: 2000 }]);
  // A flood of names a client made up.
  for (let i = 0; i < 1000; i++) log.record(`/made/up/${i}/${'x'.repeat(2000)}`, 'does not resolve (ENOENT)', 3000 + i);
  const list = log.list();
  expect(list).toHaveLength(256);
  expect(list[0].library.startsWith('/made/up/999/')).toBe(true);
  expect(list.every((r) => r.library.length <= 512)).toBe(true);
  expect(list.some((r) => r.library === '/usr.real/lib/a.so')).toBe(false); // the least recent went first
  log.flush();
  expect(readRefusals(file)).toHaveLength(256);
  expect(fs.statSync(file).size).toBeLessThan(256 * 1024);
  expect(lines.filter((l) => l.includes('hook: refused')).length).toBeLessThanOrEqual(20);
  // Counts survive a restart of the daemon.
  expect(new RefusalLog(file, makeLogger('error')).list()).toEqual(readRefusals(file));
});
