/**
 * Node flags for a process whose work is randomizing libraries (the hook daemon), and why.
 *
 * V8 compiles hot functions on its worker threads, four by default whatever the core count. In a
 * fresh process's first randomizations those compile jobs ran on several threads at once and, on
 * 2 cores, took CPU from the main thread that was waiting for their code. One worker fewer than
 * the cores leaves the main thread a core of its own. Measured on 2 cores (bench/RESULTS.md,
 * whole-set passes): the warm-up of a fresh process's first pass, 265 -> 164 ms; the steady state
 * unchanged.
 */
import * as os from 'os';

/** Node's own default (`--v8-pool-size`): more is never asked for. */
const NODE_DEFAULT_POOL = 4;

export function randomizerNodeFlags(cores: number = os.availableParallelism()): string[] {
  return [`--v8-pool-size=${Math.min(NODE_DEFAULT_POOL, Math.max(1, cores - 1))}`];
}
