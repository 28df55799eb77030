/**
 * Metadata of the real tree that the view may answer from memory, without reading
 * the (slow) real tree again: an entry is recorded only when the directory holding it
 * was already under an inotify watch before it was read, is forgotten on any event in
 * that directory, and is trusted at most `trustMs` after it was read. inotify queue
 * overflows cannot be seen through Node's fs.watch; the age limit bounds what such a
 * lost event could leave stale, and a package operation forgets everything.
 *
 * Hard links: inotify reports a change in the directory of the name it was made through,
 * so a file with other links is vouched only while its inode itself is watched (`watchInode`,
 * whose events reach every name), and names are indexed by device and inode, so that a
 * change seen through one name forgets all names of that file together.
 */
import * as fs from 'fs';
import * as path from 'path';

/** A file's device and inode: what all of its hard links share. */
export type InodeKey = string;

export function inodeKey(st: fs.BigIntStats): InodeKey {
  return `${st.dev}:${st.ino}`;
}

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
  /** The names recorded for each regular file, by inodeKey. */
  private readonly names = new Map<InodeKey, Set<string>>();
  /**
   * Puts a watch on the inode of `file` (which has other hard links) and says whether it is live
   * with `st` still current; without it such a file is not vouched for.
   */
  watchInode?: (file: string, st: fs.BigIntStats) => boolean;

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
    // Another name may be in a directory we do not watch: only an inode watch sees its changes.
    if (st?.isFile() && st.nlink > 1n && !this.watchInode?.(file, st)) return;
    this.put(this.attrs, file, st);
    if (!st?.isFile()) return;
    const key = inodeKey(st);
    const set = this.names.get(key) ?? new Set<string>();
    set.add(file);
    this.names.set(key, set);
  }

  /** The names recorded for the file with this device and inode. */
  namesOf(key: InodeKey): string[] {
    return [...(this.names.get(key) ?? [])];
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
   * costs a few map deletions even with many entries recorded. The file's other names
   * (same device and inode as recorded, or as `now`) are forgotten too, and returned.
   */
  forget(file: string, subtree: boolean, now?: InodeKey): string[] {
    // The file's other names go with it: what was recorded for this name, and what it is now.
    const was = this.attrs.get(file)?.value;
    const others = new Set<string>();
    for (const key of [was?.isFile() ? inodeKey(was) : undefined, now]) {
      if (!key) continue;
      for (const name of this.names.get(key) ?? []) if (name !== file) others.add(name);
      this.names.delete(key);
    }
    for (const name of [file, ...others]) {
      for (const map of this.maps) map.delete(name);
      this.listings.delete(path.dirname(name));
    }
    if (subtree) {
      const below = file + '/';
      for (const map of this.maps) for (const key of map.keys()) if (key.startsWith(below)) map.delete(key);
    }
    return [...others];
  }

  forgetAll(): void {
    for (const map of this.maps) map.clear();
    this.names.clear();
  }

  get size(): number {
    let n = 0;
    for (const map of this.maps) n += map.size;
    return n + this.names.size;
  }

}
