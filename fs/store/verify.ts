/**
 * The store's check (`fscache verify`): compare every flash copy's bytes with the index's hash and with the
 * real file's bytes now. Contents, not identities: a same-size rewrite that left the
 * identity as it was (coarse timestamps, an mtime restored) is found too.
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import type { Logger } from '../../core/log';
import type { Paths } from '../../core/paths';
import { withRegularFile } from '../../core/regular-file';
import { checkTrustedPath } from '../../core/trust';
import { StoreIndex } from './index-db';

const CHUNK = 1 << 20;

export interface VerifyResult {
  checked: number;
  good: number;
  /** Copy whose bytes differ from what was indexed. */
  corrupt: string[];
  /** Copy whose bytes differ from the real file's now, or whose real file is gone. */
  stale: string[];
  dropped: number;
}

export function verifyStore(paths: Paths, log: Logger, fix: boolean): VerifyResult {
  const index = StoreIndex.open(paths.index, log);
  const result: VerifyResult = { checked: 0, good: 0, corrupt: [], stale: [], dropped: 0 };
  try {
    for (const entry of index.all()) {
      result.checked++;
      const copy = path.join(paths.store, entry.path);
      const copyHash = hashFile(copy);
      if (copyHash !== entry.hash) result.corrupt.push(entry.path);
      else if (hashFile(path.join(paths.realTree, entry.path)) !== copyHash) result.stale.push(entry.path);
      else {
        result.good++;
        continue;
      }
      if (fix) {
        // Removed by name only where no store directory on the way is a symlink (never a file it leads to).
        if (trustedDir(paths.root, path.dirname(copy))) fs.rmSync(copy, { force: true });
        index.remove(entry.path);
        result.dropped++;
      }
    }
  } finally {
    index.close();
  }
  return result;
}

function trustedDir(root: string, dir: string): boolean {
  try {
    checkTrustedPath(root, dir);
    return true;
  } catch {
    return false;
  }
}

/** sha256 of a regular file's bytes, or undefined if it is missing, unreadable or not a regular file (never followed as a symlink). */
function hashFile(file: string): string | undefined {
  // withRegularFile: a FIFO in the file's place must not hang verify.
  return withRegularFile(file, (fd) => {
    try {
      const hash = createHash('sha256');
      const buf = Buffer.allocUnsafe(CHUNK);
      for (let n; (n = fs.readSync(fd, buf, 0, CHUNK, null)) > 0; ) hash.update(buf.subarray(0, n));
      return hash.digest('hex');
    } catch {
      return undefined;
    }
  });
}
