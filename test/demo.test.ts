/** The README's main job: `fscache demo` succeeds within a minute and leaves nothing behind. */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import { CLI_ENTRY } from '../fs/view-process';
import { fuseAvailable } from './helpers/view-sandbox';

const skip = fuseAvailable();
(skip ? test.skip : test)('fscache demo runs programs through the view and cleans up', () => {
  const before = fs.readdirSync(os.tmpdir()).filter((n) => n.startsWith('fscache-demo-'));
  const t0 = Date.now();
  const r = spawnSync(process.execPath, [CLI_ENTRY, 'demo'], { encoding: 'utf8', timeout: 60000 });
  expect({ code: r.status, stderr: r.stderr }).toMatchObject({ code: 0 });
  expect(Date.now() - t0).toBeLessThan(60000);
  expect(r.stdout).toMatch(/opens through the view: \d+; from flash: [1-9]/);
  expect(r.stdout).toMatch(/setup --yes[\s\S]*set up:[\s\S]*started:[\s\S]*health      healthy[\s\S]*stopped:/);
  expect(r.stdout).toMatch(/all programs ran through the view/);
  const root = /sandbox root (\S+)/.exec(r.stdout)![1];
  expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(root);
  expect(fs.existsSync(root)).toBe(false);
  expect(fs.readdirSync(os.tmpdir()).filter((n) => n.startsWith('fscache-demo-'))).toEqual(before);
});
if (skip) console.warn(`demo test skipped: ${skip}`);
