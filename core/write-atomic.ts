/** One way to replace a file so that readers see the old or the new content, never a part. */
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';

/**
 * Writes `data` to `file` atomically: temporary name in the same directory, fsync, rename, fsync dir.
 * `mtimeSec`: the file's times, set before the rename (the hook's images record their size there).
 */
export function writeAtomic(file: string, data: Uint8Array | string, mode: number, o: { mtimeSec?: number } = {}): void {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  let fd = -1;
  try {
    fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, mode);
    const bytes = typeof data === 'string' ? Buffer.from(data) : data;
    for (let off = 0; off < bytes.length; ) off += fs.writeSync(fd, bytes, off, bytes.length - off);
    fs.fchmodSync(fd, mode); // the umask must not decide what readers trust
    fs.fchownSync(fd, 0, 0);
    if (o.mtimeSec !== undefined) fs.futimesSync(fd, o.mtimeSec, o.mtimeSec);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = -1;
    fs.renameSync(tmp, file);
  } catch (e) {
    if (fd >= 0) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  try {
    const dfd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    fs.fsyncSync(dfd);
    fs.closeSync(dfd);
  } catch {
    // a directory fsync failing loses durability, not correctness
  }
}

/** A text file's content, or undefined when it cannot be read (missing): what an edit starts from. */
export function readTextOr(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

/** A file's permission bits, or `dflt` when it is missing: an edit keeps the administrator's mode. */
export function modeOr(file: string, dflt: number): number {
  try {
    return fs.statSync(file).mode & 0o7777;
  } catch {
    return dflt;
  }
}
