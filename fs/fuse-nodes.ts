/**
 * The node table of the kernel session: node ids the kernel holds ↔ view paths.
 *
 * - Each positive LOOKUP reply hands the kernel one reference (its lookup count);
 *   FORGET/BATCH_FORGET give them back; a node is dropped when its count reaches 0.
 *   The root (id 1) is never looked up nor forgotten.
 * - Node ids are never reused within a connection (a counter from 2), so a stale
 *   id can never name another file; the generation is therefore the same for all
 *   nodes. When the real file at a path is replaced (another inode or file type),
 *   the path gets a new node: the kernel then builds a fresh inode with no cached
 *   pages, and the old node lives until the kernel forgets it.
 * - A node remembers the view handle its reads go through (opened at its first READ,
 *   where the view's identity check runs) and the identity that handle was opened
 *   for, so that attributes showing another identity drop the handle.
 */
import type { Attr, Handle } from './session';
import { FUSE_ROOT_ID } from './fuse-protocol';

/** What identifies the real file's content: inode, size and mtime (a change in any drops the handle). */
export function identityKey(a: Attr): string {
  return `${a.dev}:${a.ino}:${a.size}:${a.mtime.getTime()}`;
}

/** The view handle a node's reads use; released when no read is in flight and it was dropped. */
export interface NodeFile {
  handle: Promise<Handle>;
  /** identityKey of the attributes last seen when the handle was opened. */
  key: string | undefined;
  inflight: number;
  dropped: boolean;
  /** Date.now() of the last READ through it, for closing idle handles. */
  lastUsed: number;
}

export interface Node {
  readonly id: number;
  readonly path: string;
  readonly parent: number;
  readonly name: string;
  lookups: number;
  /** File type bits and inode of the real file this node was made for. */
  fileType: number;
  ino: number;
  /** identityKey of the attributes last answered for this node. */
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
const S_IFMT = 0o170000;

export class NodeTable {
  private readonly byId = new Map<number, Node>();
  private readonly byPath = new Map<string, number>();
  private nextId = FUSE_ROOT_ID + 1;

  constructor() {
    const root: Node = { id: FUSE_ROOT_ID, path: '/', parent: FUSE_ROOT_ID, name: '', lookups: 1, fileType: 0o040000, ino: 0 };
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
   * `replaced` returns the previous node of that path when the real file changed identity.
   */
  lookedUp(parent: Node, name: string, attr: Attr): { node: Node; replaced?: Node } {
    const path = NodeTable.childPath(parent, name);
    const existing = this.byViewPath(path);
    const fileType = attr.mode & S_IFMT;
    if (existing && existing.fileType === fileType && existing.ino === attr.ino) {
      existing.lookups++;
      return { node: existing };
    }
    const node: Node = { id: this.nextId++, path, parent: parent.id, name, lookups: 1, fileType, ino: attr.ino };
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
