/** The README's main job: `fscache demo` succeeds within a minute and leaves nothing behind. */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import { CLI_ENTRY } from '../fs/service/view-process';
import { fuseAvailable } from './helpers/view-sandbox';

const skip = fuseAvailable();
(skip ? test.skip : test)('fscache demo runs programs through the view, shows a shared randomized image, and cleans up', () => {
  const before = fs.readdirSync(os.tmpdir()).filter((n) => n.startsWith('fscache-demo-'));
  const t0 = Date.now();
  // The README promises under a minute: the spawn may take longer, so that the assertion below can fail.
  const r = spawnSync(process.execPath, [CLI_ENTRY, 'demo'], { encoding: 'utf8', timeout: 120000 });
  expect({ code: r.status, stderr: r.stderr }).toMatchObject({ code: 0 });
  expect(Date.now() - t0).toBeLessThan(60000);
  expect(r.stdout).toMatch(/opens through the view: \d+; from flash: [1-9]/);
  expect(r.stdout).toMatch(/setup --yes[\s\S]*set up:[\s\S]*started:[\s\S]*health      healthy[\s\S]*stopped:/);
  expect(r.stdout).toMatch(/all programs ran through the view/);
  expectHookEvidence(r.stdout);
  // The view's part: a setuid-root program run by nobody maps the library under its own name, randomized.
  expect(r.stdout).toMatch(/2nd launch: pid \d+ \(uid 65534 euid 0\) maps R\/usr\.view\/lib\/fscache-demo\/libfscachedemo\.so; checksum \d+; functions by address: /);
  expect(r.stdout).toMatch(/^view: a setuid program run by nobody maps the library under its own name, randomized/m);
  const root = /sandbox root (\S+)/.exec(r.stdout)![1];
  expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(root);
  expect(fs.existsSync(root)).toBe(false);
  expect(fs.readdirSync(os.tmpdir()).filter((n) => n.startsWith('fscache-demo-'))).toEqual(before);
});
/**
 * The hook part's facts, as the demo read them from /proc/PID/maps of the running processes: the
 * 1st launch mapped the original; the 2nd and 3rd, alive at once, mapped the image named by the
 * original's identity (its inode is the key's 2nd field), one file (same inode, not the original's);
 * same checksum as the original, same functions at shuffled offsets.
 */
function expectHookEvidence(out: string): void {
  const launch = /pid \d+ maps (\S+) inode (\d+)/g;
  const first = /1st launch[^\n]*\n {2}pid \d+ maps (\S+) inode (\d+)\n {2}checksum (\d+); functions by address: (.+)\n/.exec(out);
  const later = /2nd and 3rd launch[^\n]*\n((?: {2}pid .*\n){2}) {2}checksum (\d+), (\d+); functions by address: (.+)\n/.exec(out);
  expect(first).not.toBeNull();
  expect(later).not.toBeNull();
  const [, origPath, origInode, sum, origOrder] = first!;
  expect(origPath).toBe('R/opt/fscache-demo/lib/libfscachedemo.so');
  const maps = [...later![1].matchAll(launch)].map((m) => ({ path: m[1], inode: m[2] }));
  expect(maps).toHaveLength(2);
  const key = /^R\/fscache\/images\/\d+\/([0-9a-f]+)-([0-9a-f]+)-([0-9a-f]+)-([0-9a-f]+)\.so$/.exec(maps[0].path);
  expect(key).not.toBeNull();
  expect(parseInt(key![2], 16)).toBe(Number(origInode));
  expect(maps[1]).toEqual(maps[0]);
  expect(maps[0].inode).not.toBe(origInode);
  expect([later![2], later![3]]).toEqual([sum, sum]);
  const order = later![4].split(' ');
  expect(order).not.toEqual(origOrder.split(' '));
  expect([...order].sort()).toEqual(origOrder.split(' ').sort());
  expect(order).toHaveLength(8);
  expect(out).toMatch(/hook +served by the view under the libraries' names \(\d+ opens\); LD_AUDIT set, mapped by \d+ processes( \(\d+ not visible to this user\))?, daemon pid \d+, epoch \d+, 2 images/);
}
if (skip) console.warn(`demo test skipped: ${skip}`);
