/**
 * A supervisor woken from its rest (fs/service/rest.ts) is a fresh node in the same process:
 * until it has its handlers, SIGTERM or SIGUSR2 would end it by their default action. Imported
 * first by the CLI's entry, this takes them from the first moment, when the wake is in the
 * environment; the supervisor has them delivered again once its own handlers are in place.
 */
/** Where the rest leaves what woke it (guard/rest.c). */
export const WAKE_ENV = 'FSCACHE_SUPERVISOR_WAKE';

const HELD = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGUSR2', 'SIGURG'] as const;
const held: NodeJS.Signals[] = [];
const hold = (sig: NodeJS.Signals) => held.push(sig);

if (process.env[WAKE_ENV]) for (const sig of HELD) process.on(sig, hold);

/** The signals held so far; holding ends. */
export function releaseHeldSignals(): NodeJS.Signals[] {
  for (const sig of HELD) process.off(sig, hold);
  return held.splice(0);
}
