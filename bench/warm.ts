/**
 * Warm launches and large-file reads: native vs the fscache view (store filled) vs
 * bindfs, one run, same tree (this machine's /usr bound read-only).
 * Run: node dist/bench/warm.js  (prints a Markdown section for bench/RESULTS.md)
 */
import { execFileSync } from 'child_process';
import { BenchRoot, chrootCommand, hyperfine, LAUNCHES, makeBenchRoot, ms, ratio } from './harness';

const SESSION_CONFIG = process.env.FSCACHE_BENCH_SESSION ? `fuse_session = ${process.env.FSCACHE_BENCH_SESSION}\n` : '';

const LARGE_FILE = '/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1';

async function main(): Promise<void> {
  const roots: BenchRoot[] = [];
  try {
    const native = await makeBenchRoot('native');
    roots.push(native);
    const view = await makeBenchRoot('view', { config: `fill_max_file = 1G\n${SESSION_CONFIG}` });
    roots.push(view);
    const bindfs = await makeBenchRoot('bindfs');
    roots.push(bindfs);

    // Fill the store: each program once through the view, and the large file.
    for (const l of LAUNCHES) execFileSync('sh', ['-c', chrootCommand(view.sandbox.root, l.argv) + ' >/dev/null']);
    execFileSync('sh', ['-c', chrootCommand(view.sandbox.root, ['/bin/cat', LARGE_FILE]) + ' >/dev/null']);
    const deadline = Date.now() + 120000;
    let last = -1;
    while (Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 2500));
      const s = view.view!.state()!.store!;
      if (s.fills === last) break;
      last = s.fills;
    }
    const state = view.view!.state()!;
    const lines: string[] = [];
    lines.push(`Store after filling: ${state.store!.fills} copies, ${(state.store!.fillBytes / 1048576).toFixed(0)} MiB.`, '');
    lines.push('| program | native | view | bindfs | view / native | bindfs / native | view / bindfs |', '|---|---|---|---|---|---|---|');
    for (const l of LAUNCHES) {
      const [n, v, b] = hyperfine([native, view, bindfs].map((r) => chrootCommand(r.sandbox.root, l.argv)), { runs: 40, warmup: 5 });
      lines.push(`| \`${l.label}\` | ${ms(n.median)} | ${ms(v.median)} | ${ms(b.median)} | ${ratio(v.median, n.median)} | ${ratio(b.median, n.median)} | ${ratio(v.median, b.median)} |`);
    }
    const size = Number(execFileSync('stat', ['-c', '%s', LARGE_FILE], { encoding: 'utf8' }));
    // dd runs on the host, outside the chroots, so that only the read goes through each file system.
    const rel = LARGE_FILE.replace(/^\/usr\//, '');
    const reads = hyperfine(
      [`${native.sandbox.realTree}/${rel}`, `${view.sandbox.root}/run/fscache/view/${rel}`, `${bindfs.sandbox.root}/run/fscache/view/${rel}`].map(
        (file) => `dd if=${file} of=/dev/null bs=1M status=none`,
      ),
      { runs: 15, warmup: 3 },
    );
    const gibs = (t: number) => `${(size / (t / 1000) / 1024 ** 3).toFixed(2)} GiB/s`;
    lines.push('', `Sequential read of \`${LARGE_FILE}\` (${(size / 1048576).toFixed(0)} MiB, cached on flash, warm page cache, dd bs=1M):`, '');
    lines.push('| | native | view | bindfs |', '|---|---|---|---|');
    lines.push(`| median | ${ms(reads[0].median)} (${gibs(reads[0].median)}) | ${ms(reads[1].median)} (${gibs(reads[1].median)}) | ${ms(reads[2].median)} (${gibs(reads[2].median)}) |`);
    lines.push(`| throughput vs native | 1.00 | ${(reads[0].median / reads[1].median).toFixed(2)} | ${(reads[0].median / reads[2].median).toFixed(2)} |`);
    const after = view.view!.state()!;
    lines.push('', `Requests that reached the view during the whole run: ${Object.entries(after.requests).map(([k, v]) => `${k} ${v}`).join(', ')}.`);
    process.stdout.write(lines.join('\n') + '\n');
  } finally {
    for (const r of roots.reverse()) await r.dispose().catch((e) => process.stderr.write(`cleanup: ${e}\n`));
  }
}

main().catch((err) => {
  process.stderr.write(`${err.stack ?? err}\n`);
  process.exit(1);
});
