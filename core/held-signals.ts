/**
 * A supervisor woken from its rest (fs/service/rest.ts) is a fresh node in the same process:
 * until it listens, SIGTERM or SIGUSR2 would end it by their default action. Imported first
 * by the CLI's entry, this listens from the first moment when the wake is in the environment,
 * and holds what comes until the supervisor takes over (receiveSignals).
 */
/** Where the rest leaves what woke it (guard/rest.c). */
export const WAKE_ENV = 'FSCACHE_SUPERVISOR_WAKE';

const HELD = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGUSR2', 'SIGURG'] as const;
const held: NodeJS.Signals[] = [];
let receiver: ((sig: NodeJS.Signals) => void) | undefined;
const holding = !!process.env[WAKE_ENV];

if (holding) for (const sig of HELD) process.on(sig, (s: NodeJS.Signals) => (receiver ? receiver(s) : held.push(s)));

/**
 * Gives `to` the signals held so far, then every later one. False when nothing holds them (not
 * woken from a rest): the caller listens itself. The listeners stay for good: removing one would
 * drop a signal libuv has taken but not yet dispatched (measured: a SIGTERM during the module
 * loads was lost that way).
 */
export function receiveSignals(to: (sig: NodeJS.Signals) => void): boolean {
  if (!holding) return false;
  receiver = to;
  for (const sig of held.splice(0)) to(sig);
  return true;
}
