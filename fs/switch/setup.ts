/**
 * `fscache setup`: the one-time move of R/usr to R/usr.real, the R/usr link to it, and the
 * view's mount point R/usr.view with its links to the real tree (fs/view/view-dir.ts).
 *
 * Order, chosen so that an interruption at any point is either harmless or finished
 * by running setup again: (1) make the new link under a temporary name, (2) rename the
 * directory to usr.real, (3) rename the link into place. Only between (2) and (3) — two
 * consecutive renames — does R/usr not exist; a rerun completes that state. A failure
 * in (3) renames the directory back.
 *
 * A separate /usr file system cannot be renamed (EBUSY): setup refuses and says how to
 * move the mount to /usr.real; then R/usr is an empty directory and setup replaces it.
 */
import * as fs from 'fs';
import * as path from 'path';
import { errnoCode, FsCacheError } from '../../core/errors';
import { linkTargetPath, makePendingLink, readLinkState, switchLink, syncDir } from './link';
import { isMountPoint } from '../../core/mounts';
import type { Paths } from '../../core/paths';
import { refreshViewDir } from '../view/view-dir';

export interface SetupPlan {
  done: boolean;
  steps: string[];
}

function isEmptyDir(dir: string): boolean {
  return fs.readdirSync(dir).length === 0;
}

/** The refusal for a separate /usr file system, with the fstab line to change and the commands. */
function separateUsrRefusal(paths: Paths): FsCacheError {
  // As the root's own fstab and shell name them: paths below R, written from R's '/'.
  const asInRoot = (p: string) => '/' + path.relative(paths.root, p);
  const usr = asInRoot(paths.usrLink);
  const real = asInRoot(paths.realTree);
  const fstab = path.join(paths.root, 'etc', 'fstab');
  let lines: string[] = [];
  try {
    lines = fs.readFileSync(fstab, 'utf8').split('\n').filter((l) => !/^\s*#/.test(l) && l.trim().split(/\s+/)[1]?.replace(/\\040/g, ' ') === usr);
  } catch {
    lines = [];
  }
  const fstabStep = lines.length
    ? `in ${fstab}, mount it at ${real} instead of ${usr}:\n` +
      lines.map((l) => `       - ${l.trim()}\n       + ${l.trim().replace(/^(\S+\s+)\S+/, `$1${real}`)}`).join('\n')
    : `wherever it is mounted from (no ${usr} line in ${fstab}: a systemd usr.mount or the initramfs), mount it at ${real} instead of ${usr}`;
  return new FsCacheError('refused', [
    `${paths.usrLink} is a file system of its own (a separate ${usr}): it cannot be renamed to ${paths.realTree}. Nothing changed. Move the mount, then run setup again:`,
    `  1. ${fstabStep}`,
    `  2. from a rescue shell or early boot (nothing running from ${usr}):`,
    `       mkdir ${real} && mount --move ${usr} ${real}`,
    `     or, on the running system, on the root file system under the mount (a non-recursive bind shows its empty ${usr}):`,
    `       mkdir ${real} && mount --bind / /mnt && fscache --root /mnt setup --yes && umount /mnt, then reboot`,
    `  3. fscache setup --yes (after the move it replaces the empty directory ${usr} with the link ${usr} -> ${linkTargetPath(paths, 'real')}; after the reboot it makes the links under ${asInRoot(paths.viewMount)})`,
  ].join('\n'));
}

export function planSetup(paths: Paths): SetupPlan {
  const { state, target } = readLinkState(paths);
  const realExists = fs.existsSync(paths.realTree);
  const viewDirStep = `create ${paths.viewMount} holding links to the real tree's top-level entries (so that, with nothing mounted on it, it is the real tree)`;
  if (state === 'real' || state === 'view' || state === 'mirror') {
    if (!realExists) throw new FsCacheError('environment', `${paths.usrLink} is fscache's link but the real tree ${paths.realTree} is missing`);
    return { done: true, steps: [] };
  }
  if (state === 'foreign' && legacyTargets(paths).includes(target ?? '')) {
    return { done: false, steps: [`switch the link ${paths.usrLink} from ${target} (an older fscache's, which does not survive a reboot) to ${linkTargetPath(paths, 'real')}`, viewDirStep] };
  }
  if (state === 'foreign') throw new FsCacheError('refused', `${paths.usrLink} is a link to ${target ?? 'something'} that fscache did not make; not touching it`);
  const link = `create the link ${paths.usrLink} -> ${linkTargetPath(paths, 'real')}`;
  if (state === 'missing') {
    if (realExists) return { done: false, steps: [`${link} (finishing an interrupted setup)`, viewDirStep] };
    throw new FsCacheError('environment', `neither ${paths.usrLink} nor ${paths.realTree} exists`);
  }
  if (isMountPoint(paths.usrLink)) throw separateUsrRefusal(paths);
  if (realExists) {
    // A separate /usr moved to usr.real (or an interrupted manual move): only an empty R/usr is replaced.
    if (isEmptyDir(paths.usrLink) && fs.statSync(paths.realTree).isDirectory()) {
      return { done: false, steps: [`remove the empty directory ${paths.usrLink} (the real tree is ${paths.realTree})`, link, viewDirStep] };
    }
    throw new FsCacheError('refused', `${paths.realTree} already exists beside the directory ${paths.usrLink}; resolve that by hand`);
  }
  return { done: false, steps: [`move the directory ${paths.usrLink} to ${paths.realTree}`, link, viewDirStep] };
}

/** Where older versions pointed R/usr: the view's mount point in /run, and the mirror itself. */
function legacyTargets(paths: Paths): string[] {
  return [path.join(paths.runDir, 'view'), paths.mirror].map((dest) => path.relative(path.dirname(paths.usrLink), dest));
}

export function runSetup(paths: Paths): void {
  planSetup(paths); // its refusals hold here too
  const { state } = readLinkState(paths);
  if (state === 'foreign') {
    // An older fscache's link (planSetup refused any other): to the real tree, as stop would.
    switchLink(paths, 'real');
    refreshViewDirIfIdle(paths);
    return;
  }
  const replaceEmpty = state === 'directory' && fs.existsSync(paths.realTree);
  let pending: string;
  try {
    pending = makePendingLink(paths, 'real');
  } catch (err) {
    throw new FsCacheError('refused', `setup cannot make its link (${errnoCode(err) ?? (err as Error).message}); ${paths.usrLink} is unchanged`);
  }
  let moved = false;
  let removed = false;
  try {
    if (replaceEmpty) {
      fs.rmdirSync(paths.usrLink);
      removed = true;
    } else if (state === 'directory') {
      fs.renameSync(paths.usrLink, paths.realTree);
      moved = true;
    }
    fs.renameSync(pending, paths.usrLink);
  } catch (err) {
    // Roll back: the directory goes back to its name, the temporary link goes away.
    if (moved) fs.renameSync(paths.realTree, paths.usrLink);
    if (removed) fs.mkdirSync(paths.usrLink, { mode: 0o755 });
    try {
      if (fs.lstatSync(pending).isSymbolicLink()) fs.unlinkSync(pending);
    } catch {
      // already gone
    }
    throw new FsCacheError('refused', `setup failed and was rolled back (${errnoCode(err) ?? (err as Error).message}); ${paths.usrLink} is unchanged`);
  }
  syncDir(path.dirname(paths.usrLink));
  refreshViewDirIfIdle(paths);
}

/** Refreshes the view's mount point's links unless something is mounted on it (then they cannot change, nor need to). */
export function refreshViewDirIfIdle(paths: Paths): void {
  if (!isMountPoint(paths.viewMount)) refreshViewDir(paths);
}
