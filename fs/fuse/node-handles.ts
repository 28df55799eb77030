/**
 * The view handles that kernel nodes read through (the kernel session, with no OPEN): opened at a
 * node's first READ for the object the node was looked up as (the view's identity check runs
 * there), and kept until FORGET or a change in place, so that a node never reopens by name a file
 * that its name no longer names.
 *
 * Each is a descriptor. Node raises RLIMIT_NOFILE's soft limit to the hard limit at start; all but
 * a quarter (at most 1024) of it is for node handles, the rest for the view's own files (fills,
 * index, watcher). Beyond that the least recently read handles are closed: such a node reopens its
 * object at its next READ, which works unless the file was replaced meanwhile (EIO then), so the
 * view should run with a generous limit (init's default hard limit is 4096).
 */
import * as fs from 'fs';
import type { Logger } from '../../core/log';
import type { Node, NodeFile } from './fuse-nodes';
import type { ViewHandlers } from './session';

export class NodeHandles {
  /** Nodes holding a view handle. */
  private readonly withFile = new Set<Node>();
  private readonly budget = handleBudget(openFilesLimit());
  private warned = false;

  constructor(private readonly handlers: ViewHandlers, private readonly log: Logger) {}

  /** The node's handle, opened now if it has none (a failed open is not kept: the next READ tries again). */
  of(node: Node): NodeFile {
    if (node.file) return node.file;
    const file: NodeFile = { handle: this.handlers.open(node.path, fs.constants.O_RDONLY, node.attr), inflight: 0, dropped: false, lastUsed: Date.now() };
    file.handle.catch(() => {
      if (node.file === file) this.drop(node);
    });
    node.file = file;
    this.withFile.add(node);
    if (this.withFile.size > this.budget) this.closeLeastRecent();
    return file;
  }

  /** The node's handle goes (FORGET, a change in place, the connection closed). */
  drop(node: Node): void {
    const file = node.file;
    node.file = undefined;
    this.withFile.delete(node);
    if (file) this.giveBack(file);
  }

  /** A handle no longer wanted: released once no read is in flight through it. */
  giveBack(file: NodeFile): void {
    if (file.dropped) return;
    file.dropped = true;
    if (file.inflight === 0) this.release(file);
  }

  /** A read through `file` ended (its caller decremented `inflight`). */
  readDone(file: NodeFile): void {
    if (file.dropped && file.inflight === 0) this.release(file);
  }

  private release(file: NodeFile): void {
    file.handle.then((h) => this.handlers.release(h)).catch(() => undefined);
  }

  /** Over the descriptor budget: the least recently read tenth of the handles (not in use) go. */
  private closeLeastRecent(): void {
    const idle = [...this.withFile].filter((n) => n.file && n.file.inflight === 0).sort((a, b) => a.file!.lastUsed - b.file!.lastUsed);
    for (const node of idle.slice(0, Math.ceil(this.budget / 10))) this.drop(node);
    if (!this.warned) {
      this.warned = true;
      this.log.warn(
        `kernel session: more than ${this.budget} nodes hold a descriptor (RLIMIT_NOFILE ${openFilesLimit()}); closing the least recently read ` +
          `(such a node reopens its file at its next read, EIO if the file was replaced meanwhile); raise the open files limit of the view`,
      );
    }
  }
}

function handleBudget(limit: number): number {
  return Math.max(256, limit - Math.min(1024, Math.floor(limit / 4)));
}

/** The soft RLIMIT_NOFILE of this process (Node raised it to the hard limit at start). */
function openFilesLimit(): number {
  try {
    const line = fs.readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith('Max open files'));
    const soft = Number(line?.split(/\s{2,}/)[1]);
    if (Number.isFinite(soft) && soft > 0) return soft;
  } catch {
    // no /proc: the minimum budget
  }
  return 1024;
}
