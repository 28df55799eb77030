/**
 * How fscache starts its own processes (supervisor, view): node and the CLI entry taken
 * from the real tree. Installed as a package inside the /usr it serves, both may have
 * been found through R/usr or through the view's mount; a child exec'd from there would
 * load through a view that may be hung, dead, or the very process waiting for it.
 */
import * as path from 'path';
import { CLI_ENTRY } from '../../core/package-root';
import type { Paths } from '../../core/paths';

/** `file` under R/usr or under the view's mount mapped to the same path under the real tree; others unchanged. */
export function inRealTree(paths: Paths, file: string): string {
  const abs = path.resolve(file);
  for (const via of [paths.usrLink, paths.viewMount]) {
    const rel = path.relative(via, abs);
    if (rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel))) return path.join(paths.realTree, rel);
  }
  return abs;
}

export interface SelfCommand {
  node: string;
  cli: string;
}

export function selfCommand(paths: Paths): SelfCommand {
  return { node: inRealTree(paths, process.execPath), cli: inRealTree(paths, CLI_ENTRY) };
}
