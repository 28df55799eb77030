/**
 * `fscache setup`: the one-time move of R/usr to R/usr.real and the R/usr link to it.
 *
 * Order, chosen so that an interruption at any point is either harmless or finished
 * by running setup again: (1) make the new link under a temporary name, (2) rename the
 * directory to usr.real, (3) rename the link into place. Only between (2) and (3) — two
 * consecutive renames — does R/usr not exist; a rerun completes that state. A failure
 * in (3) renames the directory back.
 */
import * as fs from 'fs';
import { errnoCode, FsCacheError } from './errors';
import { linkTargetPath, makePendingLink, readLinkState } from './link';
import type { Paths } from './paths';

export interface SetupPlan {
  done: boolean;
  steps: string[];
}

export function planSetup(paths: Paths): SetupPlan {
  const { state, target } = readLinkState(paths);
  const realExists = fs.existsSync(paths.realTree);
  if (state === 'real' || state === 'view' || state === 'mirror') {
    if (!realExists) throw new FsCacheError('environment', `${paths.usrLink} is fscache's link but the real tree ${paths.realTree} is missing`);
    return { done: true, steps: [] };
  }
  if (state === 'foreign') throw new FsCacheError('refused', `${paths.usrLink} is a link to ${target ?? 'something'} that fscache did not make; not touching it`);
  if (state === 'missing') {
    if (realExists) return { done: false, steps: [`create the link ${paths.usrLink} -> ${linkTargetPath(paths, 'real')} (finishing an interrupted setup)`] };
    throw new FsCacheError('environment', `neither ${paths.usrLink} nor ${paths.realTree} exists`);
  }
  if (realExists) throw new FsCacheError('refused', `${paths.realTree} already exists beside the directory ${paths.usrLink}; resolve that by hand`);
  return {
    done: false,
    steps: [`move the directory ${paths.usrLink} to ${paths.realTree}`, `create the link ${paths.usrLink} -> ${linkTargetPath(paths, 'real')}`],
  };
}

export function runSetup(paths: Paths): void {
  const { state } = readLinkState(paths);
  let pending: string;
  try {
    pending = makePendingLink(paths, 'real');
  } catch (err) {
    throw new FsCacheError('refused', `setup cannot make its link (${errnoCode(err) ?? (err as Error).message}); ${paths.usrLink} is unchanged`);
  }
  let moved = false;
  try {
    if (state === 'directory') {
      fs.renameSync(paths.usrLink, paths.realTree);
      moved = true;
    }
    fs.renameSync(pending, paths.usrLink);
  } catch (err) {
    // Roll back: the directory goes back to its name, the temporary link goes away.
    if (moved) fs.renameSync(paths.realTree, paths.usrLink);
    try {
      if (fs.lstatSync(pending).isSymbolicLink()) fs.unlinkSync(pending);
    } catch {
      // already gone
    }
    throw new FsCacheError('refused', `setup failed and was rolled back (${errnoCode(err) ?? (err as Error).message}); ${paths.usrLink} is unchanged`);
  }
}
