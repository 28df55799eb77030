/**
 * Writes dist/doc/fscache.1 (the man page) and dist/doc/fscache.bash (bash completion) at build
 * time, from what cannot drift: the CLI's own help (`fscache --help`, `fscache help VERB`, run from
 * dist/), the config keys' table (core/config.ts, CONFIG_KEYS) and the README's exit-code table.
 * package.json's `man` installs the page (`npm install -g` links it into PREFIX/share/man/man1),
 * which the systemd unit's Documentation=man:fscache(1) names.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { CONFIG_KEYS } from '../core/config';
import { CLI_ENTRY, PACKAGE_ROOT } from '../core/package-root';

export interface HelpEntry { term: string; text: string }
export interface HelpPage { usage: string; description: string; options: HelpEntry[]; commands: HelpEntry[] }
export interface Verb { name: string; page: HelpPage }

/** Commander's help text as sections; wrapped descriptions are joined again. */
export function parseHelp(text: string): HelpPage {
  const page: HelpPage = { usage: '', description: '', options: [], commands: [] };
  let section: HelpEntry[] | null = null;
  const desc: string[] = [];
  for (const line of text.split('\n')) {
    const usage = /^Usage: (.*)$/.exec(line);
    if (usage) { page.usage = usage[1]; continue; }
    if (line === 'Options:') { section = page.options; continue; }
    if (line === 'Commands:') { section = page.commands; continue; }
    if (/^[A-Z][A-Za-z ]*:$/.test(line)) { section = null; continue; } // "Exit codes:" and other added text
    if (!section) {
      if (line.trim() && !page.options.length) desc.push(line.trim());
      continue;
    }
    const entry = /^ {2}(\S(?:.*?\S)?)(?: {2,}(\S.*))?$/.exec(line);
    const more = /^ {3,}(\S.*)$/.exec(line);
    if (more && section.length) section[section.length - 1].text = `${section[section.length - 1].text} ${more[1]}`.trim();
    else if (entry) section.push({ term: entry[1], text: entry[2] ?? '' });
  }
  page.description = desc.join(' ');
  return page;
}

function helpOf(args: string[]): HelpPage {
  return parseHelp(execFileSync(process.execPath, [CLI_ENTRY, ...args], { encoding: 'utf8', timeout: 30000 }));
}

/** The README's exit-code table: `| 0 | success ... |` rows under "### Exit codes". */
export function exitCodes(readme: string): HelpEntry[] {
  const at = readme.indexOf('### Exit codes');
  if (at < 0) return [];
  const rows: HelpEntry[] = [];
  for (const line of readme.slice(at).split('\n').slice(1)) {
    if (/^#/.test(line)) break;
    const m = /^\| *(\d+) *\| *(.*?) *\|$/.exec(line);
    if (m) rows.push({ term: m[1], text: m[2] });
  }
  return rows;
}

/** Roff-safe text: backslashes, leading dots and quotes, `code` as bold. */
export function roff(text: string): string {
  return text
    .replace(/\\/g, '\\e')
    .replace(/-/g, '\\-')
    .replace(/`([^`]+)`/g, '\\fB$1\\fR')
    .replace(/^([.'])/, '\\&$1');
}

function entries(list: HelpEntry[]): string[] {
  return list.flatMap((e) => ['.TP', `.B ${roff(e.term)}`, roff(e.text)]);
}

export function manPage(version: string, top: HelpPage, verbs: Verb[], codes: HelpEntry[]): string {
  const lines = [
    `.TH FSCACHE 1 "" "fscache ${version}" "System Administration"`,
    '.SH NAME',
    `fscache \\- ${roff(top.description.replace(/\.$/, ''))}`,
    '.SH SYNOPSIS',
    '.B fscache',
    '[\\fB\\-\\-root\\fR \\fIdir\\fR] [\\fB\\-\\-config\\fR \\fIfile\\fR] \\fIcommand\\fR [\\fIoptions\\fR]',
    '.SH DESCRIPTION',
    roff(top.description),
    'The README shipped with the package (and DESIGN.md in the source) explains the promises: fail open,',
    'boots after a power cut, never stale, never torn.',
    '.SH OPTIONS',
    ...entries(top.options),
    '.SH COMMANDS',
  ];
  for (const v of verbs) {
    lines.push('.TP', `.B ${roff(v.page.usage.replace(/^fscache /, ''))}`, roff(v.page.description));
    const own = v.page.options.filter((o) => !o.term.startsWith('-h, --help'));
    if (own.length) lines.push('.RS', ...entries(own), '.RE');
  }
  lines.push('.SH CONFIGURATION',
    'One file, \\fIR\\fB/etc/fscache.conf\\fR, of \\fIkey\\fR = \\fIvalue\\fR lines and # comments.',
    '\\fBfscache config\\fR prints it with every key documented.');
  for (const [key, spec] of Object.entries(CONFIG_KEYS)) {
    lines.push('.TP', `.B ${roff(key)}`, `${roff(spec.doc)} (Default: ${roff(spec.default || 'empty')}; allowed: ${roff(spec.allowed)})`);
  }
  lines.push('.SH EXIT STATUS', ...entries(codes),
    '.SH ENVIRONMENT', '.TP', '.B FSCACHE_ROOT', 'The root prefix \\fIR\\fR when \\fB\\-\\-root\\fR is not given (default /).',
    '.SH FILES', '.TP', '.I R/etc/fscache.conf', 'the config file', '.TP', '.I R/usr', 'the link switched between the real tree and the view',
    '.TP', '.I R/usr.real', 'the real tree', '.TP', '.I R/fscache/', 'flash storage: the store, randomized images, the index',
    '.TP', '.I R/run/fscache/', 'state, sockets and logs of the running parts',
    '.SH SEE ALSO', '.BR ld.so (8),', '.BR rtld\\-audit (7),', '.BR fuse (4)', '');
  return lines.join('\n');
}

export function bashCompletion(top: HelpPage, verbs: Verb[]): string {
  const words = (list: HelpEntry[]) => list.flatMap((e) => e.term.split(/[ ,]+/).filter((w) => w.startsWith('-')));
  const cases = verbs.map((v) => `    ${v.name}) opts='${words(v.page.options).join(' ')}' ;;`);
  return `# bash completion for fscache (generated by doc/gen-man.ts from the CLI's help)
_fscache() {
  local cur=\${COMP_WORDS[COMP_CWORD]} prev=\${COMP_WORDS[COMP_CWORD-1]} verb='' i opts
  case $prev in --root) COMPREPLY=($(compgen -d -- "$cur")); return ;; --config) COMPREPLY=($(compgen -f -- "$cur")); return ;; esac
  for ((i = 1; i < COMP_CWORD; i++)); do
    case \${COMP_WORDS[i]} in --root|--config) ((i++)) ;; -*) ;; *) verb=\${COMP_WORDS[i]}; break ;; esac
  done
  if [ -z "$verb" ]; then
    COMPREPLY=($(compgen -W '${verbs.map((v) => v.name).join(' ')} ${words(top.options).join(' ')}' -- "$cur"))
    return
  fi
  case $verb in
${cases.join('\n')}
    *) opts='' ;;
  esac
  if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W "$opts" -- "$cur")); else COMPREPLY=($(compgen -f -- "$cur")); fi
}
complete -F _fscache fscache
`;
}

function main(): void {
  const top = helpOf(['--help']);
  const verbs: Verb[] = top.commands
    .map((c) => c.term.split(' ')[0])
    .filter((name) => name !== 'help')
    .map((name) => ({ name, page: helpOf(['help', name]) }));
  const version = (JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
  const codes = exitCodes(fs.readFileSync(path.join(PACKAGE_ROOT, 'README.md'), 'utf8'));
  if (!codes.length) throw new Error("README.md has no '### Exit codes' table");
  const out = path.join(PACKAGE_ROOT, 'dist', 'doc');
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'fscache.1'), manPage(version, top, verbs, codes));
  fs.writeFileSync(path.join(out, 'fscache.bash'), bashCompletion(top, verbs));
}

if (require.main === module) main();
