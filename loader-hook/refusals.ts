/**
 * The daemon's record of refusals: which library was answered "no image", why, how often, and
 * when last, for `fscache images` (R/run/fscache/hook-refusals.json, root-owned 0600: it names
 * whatever anyone asked about, files others cannot read included).
 *
 * Anyone may ask the daemon about any path, so everything here is bounded, in memory and on
 * disk: at most MAX_ENTRIES (library, reason) pairs, the least recently refused dropped first;
 * names and reasons cut to a fixed length; the file rewritten at most once per FLUSH_MS (at once after a quiet FLUSH_MS); and the
 * log told about a new pair at most LOG_PER_MINUTE times a minute (the rest are counted, and the
 * count is logged once the minute is over).
 */
import * as fs from 'fs';
import type { Logger } from '../core/log';
import { writeAtomic } from './images';

export interface Refusal {
  /** The library as the daemon resolved it (the real tree's path), or as asked when it did not resolve. */
  library: string;
  reason: string;
  count: number;
  first: number;
  last: number;
}

const MAX_ENTRIES = 256;
const MAX_LIBRARY = 512;
const MAX_REASON = 240;
const FLUSH_MS = 1000;
const LOG_PER_MINUTE = 20;

const cut = (s: string, n: number) => (s.length > n ? s.slice(0, n - 1) + '…' : s);

export function readRefusals(file: string): Refusal[] {
  try {
    const list = JSON.parse(fs.readFileSync(file, 'utf8')) as Refusal[];
    return Array.isArray(list) ? list.slice(0, MAX_ENTRIES) : [];
  } catch {
    return [];
  }
}

export class RefusalLog {
  /** Insertion order is recency order: a refusal moves its pair to the end. */
  private readonly entries = new Map<string, Refusal>();
  private flushTimer?: NodeJS.Timeout;
  private lastFlush = 0;
  private logWindow = { start: 0, logged: 0, unlogged: 0 };

  constructor(private readonly file: string, private readonly log: Logger) {
    // Counts survive a daemon restart within the boot (the file lives in R/run).
    for (const r of readRefusals(file).reverse()) this.entries.set(`${r.library}\0${r.reason}`, r);
  }

  record(library: string, reason: string, now = Date.now()): void {
    library = cut(library, MAX_LIBRARY);
    reason = cut(reason.replace(/\n/g, ' '), MAX_REASON);
    const id = `${library}\0${reason}`;
    const known = this.entries.get(id);
    this.entries.delete(id);
    this.entries.set(id, known ? { ...known, count: known.count + 1, last: now } : { library, reason, count: 1, first: now, last: now });
    if (this.entries.size > MAX_ENTRIES) this.entries.delete(this.entries.keys().next().value as string);
    if (!known) this.logNew(library, reason, now);
    this.scheduleFlush();
  }

  /** Most recent first. */
  list(): Refusal[] {
    return [...this.entries.values()].reverse();
  }

  private logNew(library: string, reason: string, now: number): void {
    const w = this.logWindow;
    if (now - w.start >= 60_000) {
      if (w.unlogged) this.log.info(`hook: ${w.unlogged} more refusal(s) in the last minute not logged (see fscache images)`);
      this.logWindow = { start: now, logged: 0, unlogged: 0 };
    }
    if (this.logWindow.logged++ < LOG_PER_MINUTE) this.log.info(`hook: refused ${library}: ${reason}`);
    else this.logWindow.unlogged++;
  }

  /** At once after a quiet second (what `fscache images` then shows is current), else at the end of it. */
  private scheduleFlush(): void {
    if (this.flushTimer) return;
    const wait = this.lastFlush + FLUSH_MS - Date.now();
    if (wait <= 0) return this.flush();
    this.flushTimer = setTimeout(() => this.flush(), wait);
    this.flushTimer.unref();
  }

  flush(): void {
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    this.lastFlush = Date.now();
    try {
      writeAtomic(this.file, JSON.stringify(this.list(), null, 1) + '\n', 0o600);
    } catch (e) {
      this.log.warn(`hook: cannot write ${this.file}: ${(e as Error).message}`);
    }
  }
}
