/**
 * Cold launches with the real tree on the emulated slow disk: natively from the slow
 * disk vs through the view with a filled flash store (on this machine's disk), page
 * cache dropped before every run. The same programs cold from the local disk give the
 * limit. Run: node dist/bench/cold.js
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { attachSlowDisk, SlowDisk } from './slow-disk';
import { alternating, BenchRoot, chrootCommand, dropCaches, hyperfine, LAUNCHES, makeBenchRoot, median, ms, ratio } from './harness';

const SESSION_CONFIG = process.env.FSCACHE_BENCH_SESSION ? `fuse_session = ${process.env.FSCACHE_BENCH_SESSION}\n` : '';
const DROP = "sh -c 'sync; echo 3 > /proc/sys/vm/drop_caches'";

async function main(): Promise<void> {
  let disk: SlowDisk | undefined;
  const roots: BenchRoot[] = [];
  try {
    disk = await attachSlowDisk();
    const slowNative = await makeBenchRoot('native', { hostUsr: disk.usr });
    roots.push(slowNative);
    const localNative = await makeBenchRoot('native');
    roots.push(localNative);
    const view = await makeBenchRoot('view', { hostUsr: disk.usr, config: `fill = **\n${SESSION_CONFIG}` });
    roots.push(view);
    // The other session, same settings, for the comparison issue 5 asks for.
    const otherSession = /libfuse2/.test(SESSION_CONFIG) ? 'kernel' : 'libfuse2';
    const view2 = await makeBenchRoot('view', { hostUsr: disk.usr, config: `fill = **\nfuse_session = ${otherSession}\n` });
    roots.push(view2);
    // Mirror mode: R/usr -> R/fscache/mirror, a full copy on the local disk (here the host's /usr,
    // which holds the same files as the slow image), no FUSE in the data path.
    const mirror = await makeBenchRoot('native');
    roots.push(mirror);
    fs.mkdirSync(path.join(mirror.sandbox.root, 'fscache', 'mirror'), { recursive: true });
    mirror.sandbox.bindReadOnly('/usr', path.join(mirror.sandbox.root, 'fscache', 'mirror'));
    fs.unlinkSync(path.join(mirror.sandbox.root, 'usr'));
    fs.symlinkSync('fscache/mirror', path.join(mirror.sandbox.root, 'usr'));
    for (const r of [view, view2]) for (const l of LAUNCHES) execFileSync('sh', ['-c', chrootCommand(r.sandbox.root, l.argv) + ' >/dev/null']);
    let last = -1;
    for (let i = 0; i < 60; i++) {
      await new Promise((r) => setTimeout(r, 2500));
      const fills = view.view!.state()!.store!.fills + view2.view!.state()!.store!.fills;
      if (fills === last) break;
      last = fills;
    }
    const lines = [`Stores filled with ${view.view!.state()!.store!.fills} and ${view2.view!.state()!.store!.fills} copies. Page cache dropped before every run (\`${DROP}\`), 5 runs each.`, ''];
    const [s1, s2] = [view, view2].map((r) => r.view!.state()!.session);
    lines.push(`| program | real tree on slow disk | view (${s1} session) | view (${s2} session) | mirror mode | local disk, native | speed-up: view ${s1} | speed-up: view ${s2} | speed-up: mirror |`, '|---|---|---|---|---|---|---|---|---|');
    for (const l of LAUNCHES) {
      const [n, v, v2, m, loc] = hyperfine([slowNative, view, view2, mirror, localNative].map((r) => chrootCommand(r.sandbox.root, l.argv)), { runs: 5, warmup: 0, prepare: DROP });
      lines.push(`| \`${l.label}\` | ${ms(n.median)} | ${ms(v.median)} | ${ms(v2.median)} | ${ms(m.median)} | ${ms(loc.median)} | ${ratio(n.median, v.median)} | ${ratio(n.median, v2.median)} | ${ratio(n.median, m.median)} |`);
    }
    lines.push('', ...pairedSessions(view, view2, s1, s2));
    process.stdout.write(lines.join('\n') + '\n');
  } finally {
    for (const r of roots.reverse()) await r.dispose().catch((e) => process.stderr.write(`cleanup: ${e}\n`));
    disk?.detach();
  }
}

/**
 * The two sessions cold, paired: hyperfine runs each command's runs back to back, and this
 * machine drifts between them; here each round launches through both views (caches dropped
 * before each launch, order alternating), and the table gives the median over rounds of
 * the ratio within a round.
 */
function pairedSessions(a: BenchRoot, b: BenchRoot, nameA: string, nameB: string): string[] {
  const lines = [
    `Sessions paired, ${PAIRED_ROUNDS} rounds (one cold launch through each view per round, order alternating, caches dropped before each):`,
    '',
    `| program | view (${nameA}), median | view (${nameB}), median | ${nameA} / ${nameB}, median of round ratios (min–max) |`,
    '|---|---|---|---|',
  ];
  const launch = (r: BenchRoot, argv: string[]) => {
    dropCaches();
    const t0 = process.hrtime.bigint();
    execFileSync('sh', ['-c', chrootCommand(r.sandbox.root, argv) + ' >/dev/null']);
    return Number(process.hrtime.bigint() - t0) / 1e6;
  };
  for (const l of LAUNCHES) {
    const ta: number[] = [];
    const tb: number[] = [];
    for (let round = 0; round < PAIRED_ROUNDS; round++) alternating(round, () => ta.push(launch(a, l.argv)), () => tb.push(launch(b, l.argv)));
    const ratios = ta.map((t, i) => t / tb[i]);
    lines.push(`| \`${l.label}\` | ${ms(median(ta))} | ${ms(median(tb))} | ${median(ratios).toFixed(3)} (${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)}) |`);
  }
  return lines;
}

const PAIRED_ROUNDS = 9;

main().catch((err) => {
  process.stderr.write(`${err.stack ?? err}\n`);
  process.exit(1);
});
