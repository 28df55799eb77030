/**
 * The man page and bash completion that the build generates (doc/gen-man.ts) from the CLI's help,
 * CONFIG_KEYS and the README's exit-code table: groff renders the page without a warning (or, without
 * groff, its structure is checked), it names every verb, key and exit code, and the completion
 * offers the verbs and a verb's options.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { CONFIG_KEYS } from '../core/config';
import { CLI_ENTRY } from '../core/package-root';
import { exitCodes, parseHelp } from '../doc/gen-man';
import { REPO } from './elf/libs';

const PAGE = path.join(REPO, 'dist', 'doc', 'fscache.1');
const COMPLETION = path.join(REPO, 'dist', 'doc', 'fscache.bash');
const has = (tool: string) => spawnSync('sh', ['-c', `command -v ${tool}`], { timeout: 5000 }).status === 0;

describe('man page and completion (built by npm run build)', () => {
  const page = fs.readFileSync(PAGE, 'utf8');
  const verbs = parseHelp(spawnSync(process.execPath, [CLI_ENTRY, '--help'], { encoding: 'utf8', timeout: 20000 }).stdout).commands
    .map((c) => c.term.split(' ')[0]).filter((v) => v !== 'help');

  test("the README's command table names every verb the CLI has", () => {
    const readme = fs.readFileSync(path.join(REPO, 'README.md'), 'utf8');
    const listed = new Set([...readme.matchAll(/^\| `([a-z-]+)[` ]/gm)].map((m) => m[1]).concat([...readme.matchAll(/^\| `[a-z-]+`, `([a-z-]+)`/gm)].map((m) => m[1])));
    expect(verbs.filter((v) => !listed.has(v))).toEqual([]);
  });

  test("the README's configuration table names every config key", () => {
    const readme = fs.readFileSync(path.join(REPO, 'README.md'), 'utf8');
    const table = readme.slice(readme.indexOf('## Configuration'), readme.indexOf('\n## ', readme.indexOf('## Configuration') + 1));
    const listed = new Set([...table.matchAll(/^\|((?: ?`[a-z_]+`,?)+) \|/gm)].flatMap((m) => [...m[1].matchAll(/`([a-z_]+)`/g)].map((k) => k[1])));
    expect(Object.keys(CONFIG_KEYS).filter((k) => !listed.has(k))).toEqual([]);
  });

  test('renders without warnings', () => {
    if (!has('groff')) {
      console.warn('SKIP rendering the man page: groff not installed; checking its structure only');
      expect(page).toMatch(/^\.TH FSCACHE 1 /);
      return;
    }
    const r = spawnSync('groff', ['-man', '-ww', '-z', '-Tutf8', PAGE], { encoding: 'utf8', timeout: 20000 });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    if (has('man')) {
      const m = spawnSync('man', ['-l', PAGE], { encoding: 'utf8', timeout: 20000, env: { ...process.env, MANPAGER: 'cat', MANWIDTH: '100' } });
      expect(m.status).toBe(0);
      expect(m.stdout).toMatch(/fscache\s+\S\s+A flash cache of \/usr/);
    }
  });

  test('has every section, verb, config key and exit code', () => {
    for (const s of ['NAME', 'SYNOPSIS', 'DESCRIPTION', 'OPTIONS', 'COMMANDS', 'CONFIGURATION', 'EXIT STATUS', 'FILES', 'SEE ALSO']) expect(page).toContain(`.SH ${s}`);
    expect(verbs.length).toBeGreaterThan(10);
    for (const v of verbs) expect(page).toMatch(new RegExp(`^\\.B ${v.replace(/-/g, '\\\\-')}\\b`, 'm'));
    for (const key of Object.keys(CONFIG_KEYS)) expect(page).toContain(`.B ${key}\n`);
    const codes = exitCodes(fs.readFileSync(path.join(REPO, 'README.md'), 'utf8'));
    expect(codes.map((c) => c.term)).toEqual(['0', '1', '2', '3', '4', '5', '6', '7']);
    for (const c of codes) expect(page).toContain(`.B ${c.term}\n`);
  });

  test('the systemd unit names this page', () => {
    expect(fs.readFileSync(path.join(REPO, 'initscripts', 'systemd', 'fscache.service'), 'utf8')).toMatch(/Documentation=.*man:fscache\(1\)/);
  });

  test('bash completion offers the verbs, then the verb\'s options', () => {
    const complete = (words: string[]) => spawnSync('bash', ['-c', `source "${COMPLETION}"; COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _fscache; echo "\${COMPREPLY[*]}"`],
      { encoding: 'utf8', timeout: 10000 });
    const verbs1 = complete(['fscache', '']).stdout.trim().split(' ');
    for (const v of verbs) expect(verbs1).toContain(v);
    expect(complete(['fscache', '--root', '/x', 'sta']).stdout.trim().split(' ')).toEqual(['start', 'status']);
    expect(complete(['fscache', 'status', '--']).stdout).toMatch(/--json/);
  });
});
