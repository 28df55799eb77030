/**
 * The mount table, read from /proc/self/mountinfo: never by stat(2) of a mount point,
 * which hangs on a hung FUSE view.
 */
import * as fs from 'fs';
import * as path from 'path';

export interface MountEntry {
  mountPoint: string;
  /** `major:minor` of the mounted file system (a FUSE mount's minor is its fusectl connection). */
  device: string;
  fstype: string;
  /** Per-mount options (`ro` for a read-only bind). */
  options: string[];
  /** The file system's own options (`ro`: read-only through every mount of it). */
  superOptions: string[];
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct) => String.fromCharCode(parseInt(oct, 8)));
}

export function mountTable(): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const fields = line.split(' ');
    const sep = fields.indexOf('-', 6);
    if (sep < 0) continue;
    entries.push({ mountPoint: unescapeMount(fields[4]), device: fields[2], options: fields[5].split(','), fstype: fields[sep + 1] ?? '', superOptions: (fields[sep + 3] ?? '').split(',') });
  }
  return entries;
}

/** What is mounted on top at `dir` (the last of the mounts stacked there), if anything. */
export function mountAt(dir: string): MountEntry | undefined {
  const wanted = path.resolve(dir);
  return mountTable().filter((m) => m.mountPoint === wanted).pop();
}

export function isMountPoint(dir: string): boolean {
  return mountAt(dir) !== undefined;
}

export function isFuse(m: MountEntry | undefined): boolean {
  return !!m && /^fuse(\.|blk|$)/.test(m.fstype);
}

/** Mount points at or below `dir`, deepest first. */
export function mountsBelow(dir: string): string[] {
  const base = path.resolve(dir);
  return mountTable().map((m) => m.mountPoint).filter((m) => m === base || m.startsWith(base + '/')).sort((a, b) => b.length - a.length);
}
