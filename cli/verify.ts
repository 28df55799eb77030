/** `fscache verify`: hash every flash copy and compare it with the index and the real file. */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { identityOf, sameIdentity } from '../fs/identity';
import { StoreIndex } from '../fs/index-db';
import type { Context } from './context';

export interface VerifyResult {
  checked: number;
  good: number;
  /** Copy whose bytes differ from what was indexed. */
  corrupt: string[];
  /** Copy whose real file has changed or gone. */
  stale: string[];
  dropped: number;
}

export function verifyStore(ctx: Context, fix: boolean): VerifyResult {
  const { paths, log } = ctx;
  const index = StoreIndex.open(paths.index, log);
  const result: VerifyResult = { checked: 0, good: 0, corrupt: [], stale: [], dropped: 0 };
  try {
    for (const entry of index.all()) {
      result.checked++;
      const copy = path.join(paths.store, entry.path);
      let hash = '';
      try {
        hash = createHash('sha256').update(fs.readFileSync(copy)).digest('hex');
      } catch {
        hash = '';
      }
      let fresh = false;
      try {
        fresh = sameIdentity(entry, identityOf(fs.lstatSync(path.join(paths.realTree, entry.path), { bigint: true })));
      } catch {
        fresh = false;
      }
      if (hash !== entry.hash) result.corrupt.push(entry.path);
      else if (!fresh) result.stale.push(entry.path);
      else {
        result.good++;
        continue;
      }
      if (fix) {
        fs.rmSync(copy, { force: true });
        index.remove(entry.path);
        result.dropped++;
      }
    }
  } finally {
    index.close();
  }
  return result;
}
