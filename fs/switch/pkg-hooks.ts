/**
 * Package-manager hooks: `fscache pause` before a package transaction, `fscache resume`
 * after it, so that installs, upgrades and removals reach the real tree and no sync undoes
 * them. Installed by `start`, removed by `stop`, each only where the package manager's
 * configuration directory exists under R; every file written atomically and marked as
 * fscache's, other content never touched:
 *   dpkg     R/etc/dpkg/dpkg.cfg.d/fscache  pre-invoke= / post-invoke= (every dpkg run that
 *                                           changes packages, apt's runs of dpkg included)
 *   Portage  R/etc/portage/bashrc           a marked block defining pre_pkg_preinst,
 *                                           post_pkg_postinst, pre_pkg_prerm, post_pkg_postrm
 *                                           (an existing definition is called first)
 *   opkg     has no transaction hook; the README shows a wrapper.
 * A hook runs inside the root, so it names fscache by its path as seen from R, in the real
 * tree (never through the view or the mirror), with `--root /`. It never makes the package
 * manager fail: a failing or missing fscache prints a warning and the hook returns 0.
 */
import * as fs from 'fs';
import * as path from 'path';
import { linkTargetPath, LinkTarget } from './link';
import { PACKAGE_ROOT } from '../../core/package-root';
import type { Paths } from '../../core/paths';
import { modeOr, readTextOr, writeAtomic } from '../../core/write-atomic';

const MARK = '# fscache: package-manager hooks (written by fscache start, removed by fscache stop)';
const BEGIN = '# >>> fscache package-manager hooks: fscache stop removes this block';
const END = '# <<< fscache package-manager hooks';

export function dpkgHookFile(paths: Paths): string {
  return path.join(paths.root, 'etc', 'dpkg', 'dpkg.cfg.d', 'fscache');
}

export function portageBashrc(paths: Paths): string {
  return path.join(paths.root, 'etc', 'portage', 'bashrc');
}

const quote = (s: string): string => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

/**
 * The command a hook inside R runs: the package's bin/fscache, named as seen from R, with the
 * part of its path that lies under R/usr, the view or the mirror mapped to the real tree (a
 * hook must not depend on the view it pauses), and `--root /`. A problem instead when no
 * program inside the root can run it (the package or the config outside R, no bin/fscache).
 */
export function hookCommand(paths: Paths, packageRoot: string, configFile: string): { command: string } | { problem: string } {
  const usrDir = path.dirname(paths.usrLink);
  let pkg = path.resolve(packageRoot);
  const aliases = [paths.usrLink, paths.mirror, ...(['view', 'mirror'] as LinkTarget[]).map((t) => path.resolve(usrDir, linkTargetPath(paths, t)))];
  for (const alias of aliases) {
    if (pkg === alias || pkg.startsWith(alias + '/')) pkg = paths.realTree + pkg.slice(alias.length);
  }
  const inRoot = (p: string) => {
    const rel = path.relative(paths.root, p);
    return rel.startsWith('..') || path.isAbsolute(rel) ? undefined : '/' + rel;
  };
  const hostBin = path.join(pkg, 'bin', 'fscache');
  const bin = inRoot(hostBin);
  if (!bin) return { problem: `fscache (${packageRoot}) is not inside the root ${paths.root}, so a package manager there cannot run it` };
  // Checked in the real tree, never through the view.
  if (!fs.existsSync(hostBin)) return { problem: `${hostBin} is missing` };
  const args = [bin, '--root', '/'];
  if (configFile !== path.join(paths.root, 'etc', 'fscache.conf')) {
    const config = inRoot(configFile);
    if (!config) return { problem: `the config ${configFile} is not inside the root ${paths.root}` };
    args.push('--config', config);
  }
  return { command: args.map(quote).join(' ') };
}

/** The dpkg.cfg.d file: dpkg runs each line's command with `sh -c` and fails if it fails. */
export function dpkgHookText(command: string): string {
  const run = (verb: string) => `${command} ${verb} --holder dpkg || echo "fscache: ${verb} failed; dpkg goes on" >&2 || true`;
  return `${MARK}\n# /usr is on the real tree for each dpkg run that changes packages, and back on the cache after it.\n` +
    `pre-invoke=${run('pause')}\npost-invoke=${run('resume')}\n`;
}

/**
 * The block appended to Portage's bashrc. Portage sources bashrc in every ebuild phase and
 * calls pre_<phase> and post_<phase> if defined. A function the user defined above the block
 * is kept under another name and called first; ROOT other than / is another system's tree.
 * An upgrade nests: preinst(new), prerm(old), postrm(old), postinst(new); the holder is the
 * package's own name, so /usr goes back after the outermost post hook.
 */
export function portageBlock(command: string): string {
  return PORTAGE_BLOCK.replace('@COMMAND@', () => command);
}

// A function that already calls fscache_pkg_hook is ours (bashrc sourced again): not wrapped twice.
const PORTAGE_BLOCK = [
  BEGIN,
  'fscache_pkg_hook() {',
  '	[ "${ROOT:-/}" = / ] || return 0',
  '	@COMMAND@ "$1" --holder "portage:${CATEGORY}/${PF}" || echo "fscache: $1 failed; emerge goes on" >&2',
  '	return 0',
  '}',
  'for fscache_fn in pre_pkg_preinst:pause post_pkg_postinst:resume pre_pkg_prerm:pause post_pkg_postrm:resume; do',
  '	fscache_verb=${fscache_fn#*:} fscache_fn=${fscache_fn%:*}',
  '	case "$(declare -f "$fscache_fn")" in *fscache_pkg_hook*) continue ;; esac',
  '	if declare -F "$fscache_fn" >/dev/null; then',
  '		eval "fscache_user_$(declare -f "$fscache_fn")"',
  '		eval "$fscache_fn() { fscache_user_$fscache_fn \\"\\$@\\"; local r=\\$?; fscache_pkg_hook $fscache_verb; return \\$r; }"',
  '	else',
  '		eval "$fscache_fn() { fscache_pkg_hook $fscache_verb; }"',
  '	fi',
  'done',
  'unset fscache_fn fscache_verb',
  END,
  '',
].join('\n');

/** `text` without our block (and without the blank line put before it). */
export function withoutBlock(text: string): string {
  const start = text.indexOf(BEGIN);
  if (start < 0) return text;
  const end = text.indexOf(END, start);
  const after = end < 0 ? '' : text.slice(end + END.length).replace(/^\n/, '');
  return text.slice(0, start).replace(/\n\n$/, '\n') + after;
}

const isDir = (dir: string): boolean => {
  try {
    return fs.lstatSync(dir).isDirectory();
  } catch {
    return false;
  }
};

export interface HookReport {
  /** Files written or already as they should be. */
  installed: string[];
  /** Why no hook could be installed, when there was a package manager to hook. */
  problem?: string;
}

/** Installs the hooks for every package manager found under R; idempotent. */
export function installPackageHooks(paths: Paths, configFile: string, packageRoot = PACKAGE_ROOT): HookReport {
  const dpkg = dpkgHookFile(paths);
  const portage = portageBashrc(paths);
  const wanted = [isDir(path.dirname(dpkg)) && dpkg, isDir(path.dirname(portage)) && portage].filter((f): f is string => !!f);
  if (wanted.length === 0) return { installed: [] };
  const hook = hookCommand(paths, packageRoot, configFile);
  if ('problem' in hook) return { installed: [], problem: hook.problem };
  const { command } = hook;
  if (wanted.includes(dpkg)) {
    const text = dpkgHookText(command);
    if (readTextOr(dpkg) !== text) writeAtomic(dpkg, text, 0o644);
  }
  if (wanted.includes(portage)) {
    const before = readTextOr(portage) ?? '';
    const rest = withoutBlock(before);
    const after = (rest === '' ? '' : rest.endsWith('\n') ? `${rest}\n` : `${rest}\n\n`) + portageBlock(command);
    if (after !== before) writeAtomic(portage, after, modeOr(portage, 0o644));
  }
  return { installed: wanted };
}

/** Removes what installPackageHooks wrote; a bashrc left empty by that goes too. */
export function removePackageHooks(paths: Paths): void {
  const dpkg = dpkgHookFile(paths);
  // Only our own file: one the administrator wrote under the same name stays.
  if (readTextOr(dpkg)?.startsWith(MARK)) fs.rmSync(dpkg, { force: true });
  const portage = portageBashrc(paths);
  const before = readTextOr(portage);
  if (before === undefined) return;
  const after = withoutBlock(before);
  if (after === before) return;
  if (after.trim() === '') fs.rmSync(portage, { force: true });
  else writeAtomic(portage, after, modeOr(portage, 0o644));
}
