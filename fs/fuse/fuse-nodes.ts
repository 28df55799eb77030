/**
 * The node table of the kernel session: node ids the kernel holds ↔ view paths.
 *
 * - Each positive LOOKUP reply hands the kernel one reference (its lookup count);
 *   FORGET/BATCH_FORGET give them back; a node is dropped when its count reaches 0.
 *   The root (id 1) is never looked up nor forgotten.
 * - Node ids are never reused within a connection (a counter from 2), so a stale
 *   id can never name another file; the generation is therefore the same for all
 *   nodes.
 * - A node is bound to the object it was looked up as (device, inode, file type). When
 *   the name comes to name another object (a package upgrade renames a new file over
 *   the old), a LOOKUP of it makes a new node: the kernel builds a fresh inode with no
 *   cached pages, and the old node keeps serving the old object's bytes (see
 *   session-kernel.ts) until the kernel forgets it, as a native file system would for
 *   processes that have the old file open or mapped. A change in place (same inode,
 *   another size or mtime) keeps the node: natively too, everyone sees the new bytes.
 * - Every request about a node reads the node's own object: LOOKUP in it, READDIR, READLINK,
 *   ACCESS and xattrs of it pass the node's identity (held()) and the view answers ESTALE when
 *   its name leads elsewhere now (a directory renamed over, a symlink swapped in), never another
 *   object's names or bytes. GETATTR answers the node's own attributes then (session-kernel.ts).
 * - A node remembers the view handle its reads go through, opened at its first READ for
 *   the node's object (the view checks device and inode on the descriptor it opens) and
 *   held until FORGET, so the bytes stay readable after the name is gone.
 */
import type { ObjectId } from '../../core/identity';
import type { Attr, Handle } from './session';
import { FUSE_ROOT_ID } from './fuse-protocol';

const S_IFMT = 0o170000;

/** What identifies the real file's content: inode, size and mtime (a change in any drops the handle). */
export function identityKey(a: Attr): string {
  return `${a.dev}:${a.ino}:${a.size}:${a.mtimeNs ?? a.mtime.getTime()}`;
}

/** Whether two answers describe the same object (device, inode and file type); its content may differ. */
export function sameObject(a: Attr, b: Attr): boolean {
  return a.dev === b.dev && a.ino === b.ino && (a.mode & S_IFMT) === (b.mode & S_IFMT);
}

/** The view handle a node's reads use; released when no read is in flight and it was dropped. */
export interface NodeFile {
  handle: Promise<Handle>;
  inflight: number;
  dropped: boolean;
  /** Date.now() of the last READ through it: the least recently read go first when descriptors run short. */
  lastUsed: number;
}

export interface Node {
  readonly id: number;
  readonly path: string;
  readonly parent: number;
  readonly name: string;
  lookups: number;
  /** File type bits, device and inode of the real file this node was made for. */
  fileType: number;
  dev: number;
  ino: number;
  /** The attributes last answered for this node's object, and their identityKey. */
  attr?: Attr;
  key?: string;
  file?: NodeFile;
  /** Names of the directory, read at READDIR offset 0 and served for the following offsets. */
  listing?: Buffer[];
  /** getxattr answers (undefined: no such attribute) and when they were read (Date.now()). */
  xattrs?: Map<string, { value: Buffer | undefined; at: number }>;
  /** ctime last answered: setting an extended attribute changes only ctime. */
  ctimeMs?: number;
}

export const GENERATION = 0;

/** The object `node` was looked up as, for the view to check what it opens; none for the root, whose descriptor the view holds. */
export function held(node: Node): ObjectId | undefined {
  return node.id === FUSE_ROOT_ID ? undefined : node;
}

export class NodeTable {
  private readonly byId = new Map<number, Node>();
  private readonly byPath = new Map<string, number>();
  private nextId = FUSE_ROOT_ID + 1;

  constructor() {
    const root: Node = { id: FUSE_ROOT_ID, path: '/', parent: FUSE_ROOT_ID, name: '', lookups: 1, fileType: 0o040000, dev: 0, ino: 0 };
    this.byId.set(root.id, root);
    this.byPath.set('/', root.id);
  }

  get(id: number): Node | undefined {
    return this.byId.get(id);
  }

  byViewPath(path: string): Node | undefined {
    const id = this.byPath.get(path);
    return id === undefined ? undefined : this.byId.get(id);
  }

  static childPath(parent: Node, name: string): string {
    return parent.path === '/' ? `/${name}` : `${parent.path}/${name}`;
  }

  /**
   * The node for a positive LOOKUP of `name` in `parent`, with one more kernel reference.
   * `replaced` returns the previous node of that path when the name now names another
   * object; that node lives on (for whoever holds it) until the kernel forgets it.
   */
  lookedUp(parent: Node, name: string, attr: Attr): { node: Node; replaced?: Node } {
    const path = NodeTable.childPath(parent, name);
    const existing = this.byViewPath(path);
    const fileType = attr.mode & S_IFMT;
    if (existing && existing.fileType === fileType && existing.dev === attr.dev && existing.ino === attr.ino) {
      existing.lookups++;
      return { node: existing };
    }
    const node: Node = { id: this.nextId++, path, parent: parent.id, name, lookups: 1, fileType, dev: attr.dev, ino: attr.ino };
    this.byId.set(node.id, node);
    this.byPath.set(path, node.id);
    return { node, replaced: existing };
  }

  /** Takes back `n` kernel references; returns the node if it is now gone. */
  forget(id: number, n: number): Node | undefined {
    const node = this.byId.get(id);
    if (!node || id === FUSE_ROOT_ID) return undefined;
    node.lookups -= n;
    if (node.lookups > 0) return undefined;
    this.byId.delete(id);
    if (this.byPath.get(node.path) === id) this.byPath.delete(node.path);
    return node;
  }

  get size(): number {
    return this.byId.size;
  }

  all(): IterableIterator<Node> {
    return this.byId.values();
  }
}
