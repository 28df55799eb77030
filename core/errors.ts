/**
 * Errors the user can act on. Each carries a kind that the CLI maps to one
 * documented exit code (README, "Exit codes"); the message is one clear line.
 */
export type FailureKind =
  | 'usage' // bad arguments or config: exit 2
  | 'refused' // fscache will not do this (e.g. not randomizable, R/usr is a directory): exit 3
  | 'degraded' // running, but not as configured: exit 4
  | 'environment' // something fscache needs is missing (/dev/fuse, the real tree): exit 5
  | 'busy' // the mount point or a lock is held by something else: exit 6
  | 'stopped'; // fscache is not running (status): exit 7

export class FsCacheError extends Error {
  constructor(
    readonly kind: FailureKind,
    message: string,
  ) {
    super(message);
    this.name = 'FsCacheError';
  }
}

export const EXIT_CODES: Record<FailureKind | 'ok' | 'internal', number> = {
  ok: 0,
  internal: 1,
  usage: 2,
  refused: 3,
  degraded: 4,
  environment: 5,
  busy: 6,
  stopped: 7,
};

/** What each exit code means, in a few words: the CLI's --help is made from this table (the README's says more). */
export const EXIT_MEANINGS: Record<keyof typeof EXIT_CODES, string> = {
  ok: 'success / healthy',
  internal: 'unexpected failure',
  usage: 'usage or config error',
  refused: 'refused',
  degraded: 'degraded (running, not as configured)',
  environment: 'environment missing (/dev/fuse, the real tree)',
  busy: 'busy (mount point or lock held)',
  stopped: 'stopped (status: nothing running)',
};

/** The errno code of a Node system error, or undefined. */
export function errnoCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined;
}
