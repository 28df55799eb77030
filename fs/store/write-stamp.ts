/**
 * Whether the real tree is unchanged since the last complete mirror sync, without walking it
 * (mirror mode at boot; a walk of /usr takes 7.5 s warm, 11.6 s cold here, far longer on a
 * slow card). Sound only where the file system itself can tell: the real tree's file system
 * is read-only as a whole (its superblock `ro`, not a read-only bind of a writable one) and
 * counts every byte ever written to its device (ext4 and f2fs: lifetime_write_kbytes, kept in
 * the superblock across mounts). A read-only mount writes nothing, so the counter, the device
 * and the tree's root directory are the same at boot as at the end of the sync exactly when
 * nothing wrote to that file system in between: any read-write mount or remount in between
 * (a package install, another system, a journal replay) writes at least its superblock.
 * Everywhere else (a writable real tree, another file system) there is no such proof, and
 * the mirror is compared with the whole tree before it is served.
 */
import * as fs from 'fs';
import * as path from 'path';
import { mountTable } from '../../core/mounts';

export interface WriteStamp {
  /** `major:minor`, file system type, bytes ever written to it (KiB). */
  device: string;
  fstype: string;
  kbytesWritten: string;
  /** The real tree's directory: inode and ctime (ns). */
  ino: string;
  ctimeNs: string;
}

const COUNTING = new Set(['ext4', 'f2fs']);

/** The real tree's write stamp, or why there is none. */
export function writeStamp(realTree: string): WriteStamp | { none: string } {
  let real: string;
  try {
    real = fs.realpathSync(realTree);
  } catch (err) {
    return { none: (err as Error).message };
  }
  // The mount holding the real tree: the deepest mount point above it, the last one stacked there.
  const holding = mountTable().filter((m) => real === m.mountPoint || real.startsWith(m.mountPoint === '/' ? '/' : m.mountPoint + '/'))
    .sort((a, b) => a.mountPoint.length - b.mountPoint.length).pop();
  if (!holding) return { none: `no mount holds ${real}` };
  if (!COUNTING.has(holding.fstype)) return { none: `the real tree is on ${holding.fstype}, which does not count its writes (ext4 and f2fs do)` };
  if (!holding.superOptions.includes('ro')) return { none: `the real tree's file system (${holding.mountPoint}) is writable` };
  try {
    const devName = path.basename(fs.readlinkSync(`/sys/dev/block/${holding.device}`));
    const kbytes = fs.readFileSync(`/sys/fs/${holding.fstype}/${devName}/lifetime_write_kbytes`, 'utf8').trim();
    const st = fs.statSync(real, { bigint: true });
    return { device: holding.device, fstype: holding.fstype, kbytesWritten: kbytes, ino: String(st.ino), ctimeNs: String(st.ctimeNs) };
  } catch (err) {
    return { none: `the write count of ${holding.mountPoint} is not readable: ${(err as Error).message}` };
  }
}

export function sameStamp(a: WriteStamp, b: WriteStamp): boolean {
  return a.device === b.device && a.fstype === b.fstype && a.kbytesWritten === b.kbytesWritten && a.ino === b.ino && a.ctimeNs === b.ctimeNs;
}
