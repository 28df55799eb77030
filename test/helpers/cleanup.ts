/** Test cleanup shared by the suites: what a test made is disposed after it, also when it failed. */

/** After each test: `get()`'s sandbox (if any) is disposed, then `clear()` forgets it. */
export function afterEachDispose(get: () => { dispose(): unknown } | undefined, clear: () => void): void {
  afterEach(async () => {
    await get()?.dispose();
    clear();
  });
}
