/**
 * What the hook does now, not what the files say: the processes that have the auditor mapped.
 * LD_AUDIT in R/etc/environment reaches only processes started after it was written, through a
 * login or a service manager that read it; `status` shows this count beside the files.
 */
import * as fs from 'fs';
import * as path from 'path';
import type { Paths } from '../core/paths';

const AUDITOR_NAME = 'fscache-audit.so';

export interface AuditorUse {
  /** Processes whose maps show an fscache auditor under R. */
  processes: number;
  /** Processes whose maps this user may not read (run as root to count them all). */
  unreadable: number;
}

/**
 * Counts by /proc/PID/maps. The kernel prints a mapped file's path as seen from the reader's root,
 * so a process in `chroot R` shows R/...: only auditors under R are counted.
 */
export function auditorUse(paths: Paths, proc = '/proc'): AuditorUse {
  const use: AuditorUse = { processes: 0, unreadable: 0 };
  const under = paths.root === '/' ? '/' : paths.root + '/';
  for (const pid of fs.readdirSync(proc)) {
    if (!/^\d+$/.test(pid)) continue;
    let maps: string;
    try {
      maps = fs.readFileSync(path.join(proc, pid, 'maps'), 'utf8');
    } catch (err) {
      // Gone meanwhile (ENOENT, ESRCH) is not counted; a refusal is.
      if ((err as NodeJS.ErrnoException).code === 'EACCES') use.unreadable++;
      continue;
    }
    if (maps.split('\n').some((l) => l.endsWith(`/${AUDITOR_NAME}`) && l.slice(l.indexOf('/')).startsWith(under))) use.processes++;
  }
  return use;
}
