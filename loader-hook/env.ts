/**
 * Transparent launches: `enableHook` makes new processes load the auditor through the
 * environment the init systems read, `disableHook` takes it out again. The auditor named is one
 * that is there whenever the package is installed (installedAuditor), so that configuration left
 * behind by a power cut is harmless. Everything under R:
 *   R/etc/environment                         LD_AUDIT=... (pam_env: logins, cron, sshd, su)
 *   R/etc/systemd/system.conf.d/fscache.conf  [Manager] DefaultEnvironment=LD_AUDIT=...
 *   R/etc/env.d/99fscache                     LD_AUDIT="..." (Gentoo; only if R/etc/env.d exists)
 * Idempotent, every file written atomically, other lines never touched (an existing LD_AUDIT
 * list is extended and later shrunk by our entry only).
 *
 * Not covered: setuid/setgid programs (ld.so ignores LD_AUDIT in secure mode unless the
 * auditor sits in a system directory and is itself setuid), static programs (no loader),
 * programs started with a cleared or rebuilt environment (env -i, some daemons), processes
 * already running. Those load the original libraries: the worst case is a system without fscache.
 */
import * as fs from 'fs';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { FsCacheError } from '../core/errors';
import { PACKAGE_ROOT } from '../core/package-root';
import type { Paths } from '../core/paths';
import { findProgram } from '../fs/service/programs';
import { modeOr, readTextOr, writeAtomic } from '../core/write-atomic';
import { realTreePathOrUndefined } from './real-path';


/** The auditor built by `npm run build` (make -C loader-hook), compiled for root "/". */
export const BUILT_AUDITOR = path.join(PACKAGE_ROOT, 'loader-hook', 'fscache-audit.so');

/** The copy for a package outside R (installedAuditor). */
function copiedAuditor(paths: Paths): string {
  return path.join(paths.root, 'etc', 'fscache', 'fscache-audit.so');
}

/**
 * Every LD_AUDIT value fscache may have written: enable replaces them with the current one,
 * disable removes them all. Among them older versions' auditor on flash, which would print an
 * error in every program once the flash is gone.
 */
function ourValues(paths: Paths, built: string): Set<string> {
  const fromR = (f: string) => '/' + path.relative(paths.root, f);
  return new Set([installedAuditor(paths, built).ldAudit, fromR(copiedAuditor(paths)), fromR(path.join(paths.flash, 'hook', 'fscache-audit.so'))]);
}

/**
 * The auditor new processes load (`file`, a host path; `copy`: enableHook puts `built` there) and
 * the LD_AUDIT value naming it as seen from R.
 *
 * LD_AUDIT outlives fscache's runtime state (R/etc/environment, the systemd drop-in), and ld.so
 * prints an error in every program whose LD_AUDIT names a missing file. So it names a file present
 * whenever the package is installed and / is mounted, never one on flash or in R/run: a package
 * installed in R names its own auditor on the real tree's side of the link, through R/usr
 * (/usr/lib/fscache/loader-hook/fscache-audit.so: found in either state of the link, and after a
 * power cut); a package outside R (a checkout serving a sandbox root) gets a copy in R/etc/fscache,
 * on the root filesystem itself, and never writes the real tree (the package manager's).
 */
export function installedAuditor(paths: Paths, built = BUILT_AUDITOR): { file: string; ldAudit: string; copy: boolean } {
  const rel = path.relative(paths.root, built);
  const real = rel.startsWith('..') ? undefined : realTreePathOrUndefined(paths, '/' + rel);
  if (real) {
    const inTree = path.relative(paths.realTree, real);
    const usr = '/' + path.relative(paths.root, paths.usrLink);
    return { file: real, ldAudit: inTree.startsWith('..') ? '/' + path.relative(paths.root, real) : path.join(usr, inTree), copy: false };
  }
  const file = copiedAuditor(paths);
  return { file, ldAudit: '/' + path.relative(paths.root, file), copy: true };
}

const MARK = '# fscache: the loader hook (fscache stop removes it)';

/** Adds or removes `value` in the LD_AUDIT line of an /etc/environment text; other lines untouched. */
export function editEnvironment(text: string, value: string, add: boolean): string {
  const lines = text === '' ? [] : text.replace(/\n$/, '').split('\n');
  const out: string[] = [];
  let found = false;
  for (const line of lines) {
    if (line === MARK) continue;
    const m = /^(\s*(?:export\s+)?LD_AUDIT=)(["']?)(.*?)\2\s*$/.exec(line);
    if (!m) {
      out.push(line);
      continue;
    }
    found = true;
    const list = m[3].split(/[:\s]/).filter((s) => s !== '' && s !== value);
    if (add) list.push(value);
    if (list.length === 0) continue; // only ours: the line goes
    if (add && list.length === 1) out.push(MARK);
    out.push(`${m[1]}${m[2]}${list.join(':')}${m[2]}`);
  }
  if (add && !found) out.push(MARK, `LD_AUDIT=${value}`);
  return out.length ? out.join('\n') + '\n' : '';
}

function systemdDropIn(paths: Paths): string {
  return path.join(paths.root, 'etc', 'systemd', 'system.conf.d', 'fscache.conf');
}
function gentooEnvD(paths: Paths): string {
  return path.join(paths.root, 'etc', 'env.d', '99fscache');
}

/**
 * Makes new processes load the auditor. Returns what took effect and what did not, one line
 * each, for the administrator: files alone change no running process.
 */
export function enableHook(paths: Paths, built = BUILT_AUDITOR): string[] {
  if (!fs.existsSync(built)) throw new FsCacheError('environment', `${built} is not built: run npm run build`);
  const { file, ldAudit, copy } = installedAuditor(paths, built);
  if (copy) {
    const bytes = fs.readFileSync(built);
    if (!fs.existsSync(file) || !fs.readFileSync(file).equals(bytes)) {
      fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o755 });
      // Root-owned and not writable by others: every process on the system will map it.
      writeAtomic(file, bytes, 0o755);
    }
  }

  const envFile = path.join(paths.root, 'etc', 'environment');
  fs.mkdirSync(path.dirname(envFile), { recursive: true });
  const before = readTextOr(envFile) ?? '';
  let after = before;
  for (const value of ourValues(paths, built)) if (value !== ldAudit) after = editEnvironment(after, value, false);
  after = editEnvironment(after, ldAudit, true);
  if (after !== before) writeAtomic(envFile, after, modeOr(envFile, 0o644));

  const dropIn = systemdDropIn(paths);
  fs.mkdirSync(path.dirname(dropIn), { recursive: true });
  const unit = `${MARK}\n[Manager]\nDefaultEnvironment=LD_AUDIT=${ldAudit}\n`;
  if ((readTextOr(dropIn) ?? '') !== unit) writeAtomic(dropIn, unit, 0o644);

  const notes = [`LD_AUDIT=${ldAudit} for new logins (${path.relative(paths.root, envFile)}) and services started from now on (systemd: after \`systemctl daemon-reexec\`); running processes and services keep their environment until restarted`];
  const envd = gentooEnvD(paths);
  if (fs.existsSync(path.dirname(envd))) {
    const text = `${MARK}\nLD_AUDIT="${ldAudit}"\n`;
    if ((readTextOr(envd) ?? '') !== text) {
      writeAtomic(envd, text, 0o644);
      notes.push(envUpdate(paths));
    }
  }
  return notes;
}

/**
 * Gentoo's env.d reaches /etc/profile.env only through env-update. Run by absolute path in the
 * root (never via PATH), for the root given (ROOT); bounded. Says so when it cannot.
 */
function envUpdate(paths: Paths): string {
  const program = findProgram(paths, 'env-update');
  if (!program) return `${path.relative(paths.root, gentooEnvD(paths))} changed, but no env-update was found: run \`env-update && . /etc/profile\``;
  const r = spawnSync(program, [], { encoding: 'utf8', timeout: 60000, env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', ROOT: paths.root } });
  if (r.status === 0) return `env-update ran: LD_AUDIT is in /etc/profile.env for new shells`;
  return `env-update failed (${r.error?.message ?? `exit ${r.status}`}${r.stderr ? `: ${r.stderr.trim().split('\n').pop()}` : ''}): run it by hand`;
}

/** Takes LD_AUDIT out again; returns what took effect and what did not, as enableHook. */
export function disableHook(paths: Paths, built = BUILT_AUDITOR): string[] {
  const envFile = path.join(paths.root, 'etc', 'environment');
  if (fs.existsSync(envFile)) {
    const before = readTextOr(envFile) ?? '';
    let after = before;
    for (const value of ourValues(paths, built)) after = editEnvironment(after, value, false);
    if (after !== before) writeAtomic(envFile, after, modeOr(envFile, 0o644));
  }
  fs.rmSync(systemdDropIn(paths), { force: true });
  const notes = ['LD_AUDIT removed for new logins and services; running processes keep the images they mapped until restarted'];
  if (fs.existsSync(gentooEnvD(paths))) {
    fs.rmSync(gentooEnvD(paths), { force: true });
    notes.push(envUpdate(paths));
  }
  // The installed auditor stays: processes started with the old environment still name it.
  return notes;
}
