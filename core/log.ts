/**
 * One-line log records to stderr (the init systems collect it), filtered by level.
 *  - Under systemd (stderr is the stream named by JOURNAL_STREAM) each line starts with its
 *    syslog priority, `<3>` … `<7>` (sd-daemon(3)), and carries no timestamp: the journal
 *    records both. Processes whose stderr is piped to such a process (the view, under the
 *    supervisor) inherit the decision through FSCACHE_LOG_JOURNAL, as their lines are
 *    forwarded to the journal unchanged.
 *  - Otherwise a timestamp and the level name. The detached supervisor's stderr is the
 *    file R/run/fscache/fscache.log on a tmpfs: keepLogBounded() caps it.
 */
import * as fs from 'fs';
import type { LogLevel } from './config';

const ORDER: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };
/** syslog(3) priorities: LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG. */
const PRIORITY: Record<LogLevel, number> = { error: 3, warn: 4, info: 6, debug: 7 };
const JOURNAL_MARK = 'FSCACHE_LOG_JOURNAL';

export interface Logger {
  error(msg: string): void;
  warn(msg: string): void;
  info(msg: string): void;
  debug(msg: string): void;
}

/** Whether stderr goes to the journal: JOURNAL_STREAM names its device and inode (or a parent said so for the same stream). */
export function stderrIsJournal(env: NodeJS.ProcessEnv = process.env): boolean {
  const stream = env.JOURNAL_STREAM;
  if (!stream) return false;
  if (env[JOURNAL_MARK] === stream) return true;
  try {
    const st = fs.fstatSync(2);
    return `${st.dev}:${st.ino}` === stream;
  } catch {
    return false;
  }
}

export function makeLogger(level: LogLevel, write: (line: string) => void = (l) => process.stderr.write(l + '\n'), journal = stderrIsJournal()): Logger {
  // Children (the view) write into a pipe that this process forwards to the same journal stream.
  if (journal && process.env.JOURNAL_STREAM) process.env[JOURNAL_MARK] = process.env.JOURNAL_STREAM;
  const at = (l: LogLevel) => (msg: string) => {
    if (ORDER[l] > ORDER[level]) return;
    write(journal ? `<${PRIORITY[l]}>fscache[${process.pid}]: ${msg}` : `${new Date().toISOString()} fscache[${process.pid}] ${l}: ${msg}`);
  };
  return { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') };
}

export const silentLogger: Logger = { error() {}, warn() {}, info() {}, debug() {} };

/** The file log's cap: beyond it the file is copied to `<log>.1` (the one old file kept) and emptied. */
export const LOG_MAX_BYTES = 1024 * 1024;
const LOG_CHECK_MS = 10000;

/**
 * Keeps `file` under `maxBytes` while this process's stderr is that file (the detached
 * supervisor's). Copy, then truncate (logrotate's copytruncate): the supervisor, the view
 * and the guard all hold the file open with O_APPEND, so after the truncate each of them
 * writes at the new end; a rename would leave them writing into the old file. Lines written
 * between the copy and the truncate are lost (a few, at most once per megabyte). Returns the stop function.
 */
export function keepLogBounded(file: string, maxBytes = LOG_MAX_BYTES, everyMs = LOG_CHECK_MS, fd = 2): () => void {
  const check = () => {
    try {
      const st = fs.fstatSync(fd);
      const named = fs.statSync(file);
      if (st.dev !== named.dev || st.ino !== named.ino || st.size <= maxBytes) return;
      fs.copyFileSync(file, `${file}.1`);
      fs.ftruncateSync(fd, 0);
    } catch {
      // A log that cannot be rotated must not stop whoever writes it.
    }
  };
  check();
  const timer = setInterval(check, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
