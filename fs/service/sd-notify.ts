/**
 * Readiness for systemd (Type=notify): `READY=1` once R/usr is switched, `STATUS=` lines,
 * `STOPPING=1`. Node cannot send a unix datagram, so guard/fscache-guard sends it
 * (`--notify MESSAGE`). Not systemd-notify: it is dynamically linked, and READY=1 is sent
 * after R/usr points at the view, so its loader and libraries would come through the view
 * (no fscache process resolves a path through the view); the guard is static and is run
 * from the real tree. It sends the message with this process's pid as the sender (root may
 * name its parent in SCM_CREDENTIALS), so the unit keeps NotifyAccess=main and the message
 * is not lost when the short-lived sender is gone before systemd reads it (systemd-notify's race).
 */
import { execFileSync } from 'child_process';
import * as path from 'path';
import type { Logger } from '../../core/log';
import { PACKAGE_ROOT } from '../../core/package-root';
import type { Paths } from '../../core/paths';
import { inRealTree } from './self-command';

export function guardProgram(paths: Paths): string {
  return inRealTree(paths, path.join(PACKAGE_ROOT, 'guard', 'fscache-guard'));
}

/** Sends `message` to NOTIFY_SOCKET if systemd set it; fail open: a failure is logged, never thrown. */
export function sdNotify(paths: Paths, message: string, log: Logger): void {
  if (!process.env.NOTIFY_SOCKET) return;
  try {
    execFileSync(guardProgram(paths), ['--notify', message], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 5000 });
  } catch (err) {
    const stderr = String((err as { stderr?: Buffer }).stderr ?? '').trim();
    log.warn(`systemd not told '${message.split('\n')[0]}': ${stderr || (err as Error).message}`);
  }
}
