/**
 * Opening the files `inspect` and `randomize` are given: inputs and outputs must be regular files.
 * A FIFO would block the open or the read forever, a device (/dev/zero) would be read until memory
 * runs out, and renaming over /dev/full would replace the device node: all refused at once, before
 * anything is read or written (ElfRefusal: the CLI's "refused", exit 3).
 */
import * as fs from 'fs';
import { ElfRefusal } from './errors';

/** Libraries larger than this are not read into memory (the largest on a desktop is ~150 MiB). */
const MAX_INPUT_BYTES = 1 << 30;

function kind(st: fs.Stats): string {
  return st.isFIFO() ? 'a FIFO' : st.isCharacterDevice() ? 'a character device' : st.isBlockDevice() ? 'a block device'
    : st.isSocket() ? 'a socket' : st.isDirectory() ? 'a directory' : 'not a regular file';
}

/** The bytes and mode of a regular file, read from one descriptor checked before reading. */
export function readRegularFile(file: string): { bytes: Buffer; mode: number } {
  // O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one.
  const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new ElfRefusal(`${file}: not a regular file (${kind(st)})`);
    if (st.size > MAX_INPUT_BYTES) throw new ElfRefusal(`${file}: larger than ${MAX_INPUT_BYTES >> 20} MiB`);
    // Exactly the size fstat gave: a file growing meanwhile cannot make us read without end.
    const bytes = Buffer.alloc(st.size);
    let off = 0;
    while (off < bytes.length) {
      const n = fs.readSync(fd, bytes, off, bytes.length - off, off);
      if (n === 0) break;
      off += n;
    }
    return { bytes: off === bytes.length ? bytes : bytes.subarray(0, off), mode: st.mode };
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Refuses an output path that exists and is not a regular file (following a symlink, as the
 * rename would not: it replaces the link, and a link to a device is refused as the device).
 */
export function checkOutputPath(file: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return; // a new file
    throw e;
  }
  if (!st.isFile()) throw new ElfRefusal(`${file}: not a regular file (${kind(st)}); not replaced`);
}
