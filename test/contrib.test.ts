/**
 * contrib/: the Gentoo env file and the Yocto class must make libraries the randomizer accepts,
 * also after each distribution's own stripping; the recipes must name files the package has.
 * The flags are read from the files themselves, so a change to them is what is tested.
 */
import { execFileSync, spawnSync } from 'child_process';
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const REPO = path.join(__dirname, '..');
const CLI = path.join(REPO, 'dist', 'cli', 'main.js');
const contrib = (rel: string) => fs.readFileSync(path.join(REPO, 'contrib', rel), 'utf8');

/** The flags a file appends, by variable: `VAR="${VAR} flags"` (Portage) or `VAR:append = " flags"` (BitBake). */
function appended(text: string): Record<string, string[]> {
  const flags: Record<string, string[]> = {};
  for (const m of text.matchAll(/^(\w+)="\$\{\1\} ([^"]*)"$|^(\w+):append = " ([^"]*)"$/gm)) {
    flags[(m[1] ?? m[3]).replace(/^TARGET_/, '')] = (m[2] ?? m[4]).split(/\s+/);
  }
  return flags;
}

const SOURCE = Array.from({ length: 8 }, (_, i) => `int f${i}(int x) { return x * ${i + 3} + ${i}; }\n`).join('') +
  'int all(int x) { return f0(x) + f1(x) + f2(x) + f3(x) + f4(x) + f5(x) + f6(x) + f7(x); }\n';

describe.each([
  ['Gentoo', 'gentoo/env/fscache-randomizable.conf', ['--strip-unneeded', '-R', '.comment', '-R', '.GCC.command.line']],
  ['Yocto', 'yocto/classes/fscache-randomizable.bbclass', ['--remove-section=.comment', '--remove-section=.note', '--strip-unneeded']],
])('%s flags', (_name, file, stripArgs) => {
  test('build a library the randomizer accepts, also once stripped as the distribution strips', () => {
    const flags = appended(contrib(file));
    expect(flags.CFLAGS).toContain('-ffunction-sections');
    expect(flags.CXXFLAGS).toContain('-ffunction-sections');
    expect(flags.LDFLAGS).toContain('-Wl,--emit-relocs');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-contrib-'));
    try {
      fs.writeFileSync(path.join(dir, 'l.c'), SOURCE);
      const lib = path.join(dir, 'libdemo.so.1');
      execFileSync('gcc', ['-O2', '-fPIC', ...flags.CFLAGS, '-shared', ...flags.LDFLAGS, '-o', lib, path.join(dir, 'l.c')]);
      execFileSync('strip', [...stripArgs, lib]);
      const r = spawnSync(process.execPath, [CLI, 'inspect', lib], { encoding: 'utf8', timeout: 60000 });
      expect({ status: r.status, stdout: r.stdout }).toEqual({ status: 0, stdout: expect.stringMatching(/: randomizable: \d+ units/) });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

test('the recipes name the package\'s own files, and the Yocto license checksum is the LICENSE file\'s', () => {
  const bb = contrib('yocto/recipes-support/fscache/fscache_0.1.0.bb');
  const md5 = createHash('md5').update(fs.readFileSync(path.join(REPO, 'LICENSE'))).digest('hex');
  expect(bb).toContain(`file://LICENSE;md5=${md5}`);
  const ebuild = contrib('gentoo/sys-fs/fscache/fscache-0.1.0.ebuild');
  const version = (JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { version: string }).version;
  expect(fs.existsSync(path.join(REPO, 'contrib/gentoo/sys-fs/fscache', `fscache-${version}.ebuild`))).toBe(true);
  expect(fs.existsSync(path.join(REPO, 'contrib/yocto/recipes-support/fscache', `fscache_${version}.bb`))).toBe(true);
  // Every initscripts/... and contrib/... path a recipe installs (sysvinit only if present: the recipe tests for it).
  const named = [...`${bb}\n${ebuild}`.matchAll(/\b((?:initscripts|contrib)\/[\w./-]+)/g)].map((m) => m[1]).filter((p) => !p.includes('sysvinit'));
  expect(named.length).toBeGreaterThan(4);
  for (const p of named) expect({ p, exists: fs.existsSync(path.join(REPO, p)) }).toEqual({ p, exists: true });
});
