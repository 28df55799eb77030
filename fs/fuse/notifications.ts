/**
 * Notifications to the kernel (FUSE_NOTIFY_INVAL_INODE, _ENTRY), written off the main thread one
 * at a time: a notification write may wait for the kernel (it takes the inode's lock, which a
 * request in flight may hold), and the view must go on answering requests meanwhile. One already
 * waiting in the queue is not queued twice: a directory's watcher events come in floods (every
 * entry of a newly watched directory), each naming the parent.
 */
import * as fs from 'fs';
import type { Logger } from '../../core/log';

export class NotificationQueue {
  private readonly waiting: Array<[string, Buffer]> = [];
  private readonly queued = new Set<string>();
  private writing = false;

  /** `fd`: the connection's descriptor now (-1 once closed: what is left is dropped). */
  constructor(private readonly fd: () => number, private readonly log: Logger, private readonly debug: boolean) {}

  /** Queues `message` under `key` (one per node or name), unless one with that key is waiting. */
  push(key: string, message: Buffer): void {
    if (this.queued.has(key)) return;
    this.queued.add(key);
    this.waiting.push([key, message]);
    if (!this.writing) this.next();
  }

  private next(): void {
    const next = this.waiting.shift();
    const fd = this.fd();
    if (!next || fd < 0) {
      this.writing = false;
      return;
    }
    const [key, message] = next;
    this.queued.delete(key);
    this.writing = true;
    fs.write(fd, message, 0, message.length, null, (err) => {
      const code = (err as NodeJS.ErrnoException | null)?.code;
      // ENOENT: the kernel holds nothing for that node or name, nothing to drop.
      if (code && code !== 'ENOENT' && code !== 'ENODEV') this.log.warn(`kernel session: notification not written: ${code}`);
      if (this.debug) this.log.debug(`kernel session: notification ${message.readInt32LE(4)} for node ${message.readBigUInt64LE(16)}: ${code ?? 'ok'}`);
      this.next();
    });
  }
}
