/**
 * Warm launches and large-file reads: native vs the fscache view (store filled) vs
 * bindfs, one run, same tree (this machine's /usr bound read-only).
 * Run: node dist/bench/warm.js  (prints a Markdown section for bench/RESULTS.md)
 */
import { execFileSync } from 'child_process';
import * as path from 'path';
import { PACKAGE_ROOT } from '../core/package-root';
import { alternating, BenchRoot, chrootCommand, hyperfine, LAUNCHES, makeBenchRoot, median, ms, ratio } from './harness';

const SESSION_CONFIG = process.env.FSCACHE_BENCH_SESSION ? `fuse_session = ${process.env.FSCACHE_BENCH_SESSION}\n` : '';

const LARGE_FILE = '/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1';
const READ_ROUNDS = 20;

/**
 * Sequential reads of LARGE_FILE through each flavour, warm page cache. dd runs on the host,
 * outside the chroots, so that only the read goes through each file system. Paired rounds
 * (native and each FUSE flavour back to back, order alternating), since single reads of
 * ~20 ms drift with the machine; then where the pages sit (bench/folio-census.py).
 */
function largeFileRead([native, view, bindfs]: BenchRoot[]): string[] {
  const rel = LARGE_FILE.replace(/^\/usr\//, '');
  const files = [`${native.sandbox.realTree}/${rel}`, `${view.sandbox.root}/usr.view/${rel}`, `${bindfs.sandbox.root}/usr.view/${rel}`];
  const size = Number(execFileSync('stat', ['-c', '%s', files[0]], { encoding: 'utf8' }));
  const times: number[][] = [[], [], []];
  const ratios: number[][] = [[], []];
  for (let round = 0; round < READ_ROUNDS; round++) {
    const t = files.map(() => 0);
    const read = (i: number) => () => (t[i] = hyperfine([`dd if=${files[i]} of=/dev/null bs=1M status=none`], { runs: 5, warmup: 1 })[0].median);
    alternating(round, read(0), () => alternating(round, read(1), read(2)));
    t.forEach((x, i) => times[i].push(x));
    ratios[0].push(t[0] / t[1]);
    ratios[1].push(t[0] / t[2]);
  }
  const gibs = (t: number) => `${(size / (t / 1000) / 1024 ** 3).toFixed(2)} GiB/s`;
  const spread = (xs: number[]) => `${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)}`;
  const census = execFileSync('python3', [path.join(PACKAGE_ROOT, 'bench', 'folio-census.py'), ...files], { encoding: 'utf8' });
  const share = (i: number) => /\((\d+%)\)/.exec(census.split('\n')[i])?.[1] ?? '?';
  return [
    `Sequential read of \`${LARGE_FILE}\` (${(size / 1048576).toFixed(0)} MiB, cached on flash, warm page cache, \`dd bs=1M\`), ${READ_ROUNDS} paired rounds of 5 reads each:`,
    '',
    '| | native | view | bindfs |',
    '|---|---|---|---|',
    `| median of round medians | ${[0, 1, 2].map((i) => `${ms(median(times[i]))} (${gibs(median(times[i]))})`).join(' | ')} |`,
    `| throughput vs native, median of rounds (min–max) | 1.00 | ${median(ratios[0]).toFixed(2)} (${spread(ratios[0])}) | ${median(ratios[1]).toFixed(2)} (${spread(ratios[1])}) |`,
    `| page cache in large folios (bench/folio-census.py) | ${[0, 1, 2].map(share).join(' | ')} |`,
  ];
}

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
    lines.push('', ...largeFileRead([native, view, bindfs]));
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
