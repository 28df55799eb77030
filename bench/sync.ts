/**
 * `fscache sync` (mirror mode) vs plain rsync of the same tree, first copy and
 * incremental (nothing changed, and 1% of files touched), medians of several runs, in
 * pairs whose order alternates.
 * Run: node dist/bench/sync.js [TREE]   (default /usr/lib/python3.11)
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { CLI_ENTRY } from '../fs/service/view-process';
import { makeSandbox } from '../dev/sandbox';
import { alternating, ms, ratio } from './harness';

const TREE = process.argv[2] ?? '/usr/lib/python3.11';
// Even counts: each order of a pair runs equally often.
const UNCHANGED_RUNS = 8;
const TOUCHED_RUNS = 6;

function time(fn: () => void): number {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}
// The upper of the two middle values for an even count (the runs in bench/RESULTS.md used this).
const upperMedian = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function main(): void {
  const sandbox = makeSandbox({ copy: true, prefix: 'fscache-bench-sync-' });
  try {
    // A writable copy of the tree as the real tree, so that files can be touched.
    execFileSync('cp', ['-a', `${TREE}/.`, sandbox.realTree]);
    fs.writeFileSync(path.join(sandbox.root, 'etc', 'fscache.conf'), 'mode = mirror\n');
    const mirror = path.join(sandbox.root, 'fscache', 'mirror');
    const plain = path.join(sandbox.root, 'plain-copy');
    const fscacheSync = () => {
      const r = spawnSync(process.execPath, [CLI_ENTRY, '--root', sandbox.root, 'sync'], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(r.stderr);
    };
    const rsync = () => execFileSync('rsync', ['-aHAX', '--delete', `${sandbox.realTree}/`, `${plain}/`]);
    const drop = (dir: string) => fs.rmSync(dir, { recursive: true, force: true });
    const files = execFileSync('find', [sandbox.realTree, '-type', 'f'], { encoding: 'utf8', maxBuffer: 1 << 30 }).trim().split('\n');
    const kib = execFileSync('du', ['-sk', sandbox.realTree], { encoding: 'utf8' }).split('\t')[0];

    const pair = (into: { fscache: number[]; rsync: number[] }, i: number) =>
      alternating(i, () => into.fscache.push(time(fscacheSync)), () => into.rsync.push(time(rsync)));
    const first = { fscache: [] as number[], rsync: [] as number[] };
    for (let i = 0; i < 3; i++) {
      drop(mirror);
      drop(plain);
      pair(first, i);
    }
    const unchanged = { fscache: [] as number[], rsync: [] as number[] };
    for (let i = 0; i < UNCHANGED_RUNS; i++) pair(unchanged, i);
    const touched = { fscache: [] as number[], rsync: [] as number[] };
    for (let i = 0; i < TOUCHED_RUNS; i++) {
      const now = new Date(Date.now() + i * 1000);
      for (const f of files.filter((_, j) => j % 100 === i)) fs.utimesSync(f, now, now);
      pair(touched, i);
    }
    const row = (label: string, x: { fscache: number[]; rsync: number[] }) =>
      `| ${label} | ${ms(upperMedian(x.fscache))} | ${ms(upperMedian(x.rsync))} | ${ratio(upperMedian(x.fscache), upperMedian(x.rsync))} |`;
    process.stdout.write([
      `Tree: a copy of \`${TREE}\` (${files.length} files, ${(Number(kib) / 1024).toFixed(0)} MiB) on this machine's disk; mirror mode.`,
      '',
      '| sync | `fscache sync` | `rsync -aHAX --delete` | ratio |',
      '|---|---|---|---|',
      row('first copy (median of 3)', first),
      row(`incremental, nothing changed (median of ${UNCHANGED_RUNS})`, unchanged),
      row(`incremental, 1% of files touched (median of ${TOUCHED_RUNS})`, touched),
      '',
    ].join('\n'));
  } finally {
    sandbox.cleanup();
  }
}

main();
