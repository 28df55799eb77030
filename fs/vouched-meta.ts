/**
 * Metadata of the real tree that the view may answer from memory, without reading
 * the (slow) real tree again: an entry is recorded only when the directory holding it
 * was already under an inotify watch before it was read, is forgotten on any event in
 * that directory, and is trusted at most `trustMs` after it was read. inotify queue
 * overflows cannot be seen through Node's fs.watch; the age limit bounds what such a
 * lost event could leave stale, and a package operation forgets everything.
 */
import * as fs from 'fs';
import * as path from 'path';

interface Recorded<T> {
  value: T;
  at: number;
}

export class VouchedMeta {
  /** lstat results; null records that the name did not exist. */
  private readonly attrs = new Map<string, Recorded<fs.BigIntStats | null>>();
  private readonly links = new Map<string, Recorded<string>>();
  private readonly listings = new Map<string, Recorded<string[]>>();
  /** Extended attributes by name (an exec asks for security.capability every time). */
  private readonly xattrLists = new Map<string, Recorded<Map<string, Buffer>>>();
  /** Every kind of answer kept, for what is done to all of them alike. */
  private readonly maps: ReadonlyArray<Map<string, unknown>> = [this.attrs, this.links, this.listings, this.xattrLists];

  constructor(
    readonly trustMs: number,
    private readonly maxEntries = 262144,
  ) {}

  get enabled(): boolean {
    return this.trustMs > 0;
  }

  private fresh<T>(map: Map<string, Recorded<T>>, key: string): T | undefined {
    const r = map.get(key);
    if (!r) return undefined;
    if (Date.now() - r.at > this.trustMs) {
      map.delete(key);
      return undefined;
    }
    return r.value;
  }

  private put<T>(map: Map<string, Recorded<T>>, key: string, value: T): void {
    if (this.size >= this.maxEntries) this.forgetAll();
    map.set(key, { value, at: Date.now() });
  }

  attr(file: string): fs.BigIntStats | null | undefined {
    return this.fresh(this.attrs, file);
  }

  link(file: string): string | undefined {
    return this.fresh(this.links, file);
  }

  listing(dir: string): string[] | undefined {
    return this.fresh(this.listings, dir);
  }

  xattrs(file: string): Map<string, Buffer> | undefined {
    return this.fresh(this.xattrLists, file);
  }

  recordAttr(file: string, st: fs.BigIntStats | null): void {
    this.put(this.attrs, file, st);
  }

  recordLink(file: string, target: string): void {
    this.put(this.links, file, target);
  }

  recordListing(dir: string, names: string[]): void {
    this.put(this.listings, dir, names);
  }

  recordXattrs(file: string, attrs: Map<string, Buffer>): void {
    this.put(this.xattrLists, file, attrs);
  }

  /**
   * Something changed at `file`: forget it and its directory's listing, and with
   * `subtree` (it is or was a watched directory) everything below it too. Only a
   * directory under watch can have vouched entries below it, so a plain file's event
   * costs a few map deletions even with many entries recorded.
   */
  forget(file: string, subtree: boolean): void {
    for (const map of this.maps) {
      map.delete(file);
      if (subtree) {
        const below = file + '/';
        for (const key of map.keys()) if (key.startsWith(below)) map.delete(key);
      }
    }
    this.listings.delete(path.dirname(file));
  }

  forgetAll(): void {
    for (const map of this.maps) map.clear();
  }

  get size(): number {
    let n = 0;
    for (const map of this.maps) n += map.size;
    return n;
  }

}
