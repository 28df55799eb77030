/** Reading a file that others may have replaced by something else: decided on the object opened. */
import * as fs from 'fs';

/**
 * Runs `use` on a descriptor of `file` if it is a regular file, else returns undefined (missing,
 * unreadable, a symlink, a FIFO, a device). Never follows a final symlink (O_NOFOLLOW), never blocks
 * on a FIFO in its place (O_NONBLOCK), and decides by fstat of the descriptor `use` reads from.
 */
export function withRegularFile<T>(file: string, use: (fd: number) => T): T | undefined {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch {
    return undefined;
  }
  try {
    return fs.fstatSync(fd).isFile() ? use(fd) : undefined;
  } finally {
    fs.closeSync(fd);
  }
}
