/**
 * Warm launches through the view with the kernel session vs native vs the view with
 * libfuse2 (fuse-native) vs bindfs, one run, same tree (this machine's /usr bound
 * read-only). This machine drifts by up to 2× between rounds, so besides one
 * hyperfine run per program the main figure is paired: many short rounds, each timing
 * every flavour back to back (order reversed every other round), and the median over
 * rounds of each round's view/native ratio.
 *
 * Run: node dist/bench/paired.js [rounds]   (prints a Markdown section for bench/RESULTS.md)
 *      node dist/bench/paired.js timeouts   (requests of a launch after idleness, per timeout)
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { PACKAGE_ROOT } from '../core/package-root';
import { BenchRoot, chrootCommand, hyperfine, LAUNCHES, makeBenchRoot, median, ms } from './harness';

interface Flavour {
  label: string;
  root: BenchRoot;
}

async function settleFills(root: BenchRoot): Promise<number> {
  let last = -1;
  for (let i = 0; i < 40; i++) {
    await new Promise((r) => setTimeout(r, 1500));
    const fills = root.view!.state()?.store?.fills ?? 0;
    if (fills === last) return fills;
    last = fills;
  }
  return last;
}

/**
 * `paired.js timeouts`: what the entry/attr timeouts cost the kernel view. A launch more
 * than a timeout after the last one re-validates every path it resolves (LOOKUP each);
 * with long timeouts it sends none. Requests and time of one launch after 2 s idle.
 */
async function timeouts(): Promise<void> {
  const lines = ['| timeouts | program | ms after 2 s idle | requests of that launch |', '|---|---|---|---|'];
  const programs = [LAUNCHES[0], LAUNCHES[4]];
  for (const t of [1, 60, 600]) {
    const root = await makeBenchRoot('view', { config: `fuse_session = kernel\nentry_timeout = ${t}\nattr_timeout = ${t}\nnegative_timeout = ${t}\naccess_flush_ms = 100\n` });
    try {
      for (const l of programs) for (let i = 0; i < 3; i++) execFileSync('sh', ['-c', chrootCommand(root.sandbox.root, l.argv) + ' >/dev/null']);
      await settleFills(root);
      for (const l of programs) execFileSync('sh', ['-c', chrootCommand(root.sandbox.root, l.argv) + ' >/dev/null']);
      for (const l of programs) {
        await new Promise((r) => setTimeout(r, 2000));
        const before = root.view!.state()!.requests;
        const t0 = process.hrtime.bigint();
        execFileSync('sh', ['-c', chrootCommand(root.sandbox.root, l.argv) + ' >/dev/null']);
        const took = Number(process.hrtime.bigint() - t0) / 1e6;
        await new Promise((r) => setTimeout(r, 300));
        const after = root.view!.state()!.requests;
        const d = Object.entries(after).filter(([k, v]) => v !== (before[k] ?? 0)).map(([k, v]) => `${k} ${v - (before[k] ?? 0)}`);
        lines.push(`| ${t} s | \`${l.label}\` | ${ms(took)} | ${d.join(', ') || 'none'} |`);
      }
    } finally {
      await root.dispose();
    }
  }
  process.stdout.write(lines.join('\n') + '\n');
}

/**
 * What one request of each kind a warm launch still sends costs through each flavour
 * (bench/request-latency.py: median and p90 of 300, back to back and 2 ms apart).
 */
function requestLatency(flavours: Flavour[]): string[] {
  const file = 'usr/lib/python3.11/os.py';
  const lines = [
    'Latency of single requests (`python3 bench/request-latency.py FILE DIR GAP_MS`, 300 each; µs, median / p90; FILE = `/usr/lib/python3.11/os.py`, lookup of a new name in `/usr/lib`):',
    '',
    '| flavour | gap | ioctl TCGETS | getxattr security.capability | lookup of a new name |',
    '|---|---|---|---|---|',
  ];
  for (const gap of [0, 2]) {
    for (const f of flavours) {
      const r = f.root.sandbox.root;
      const out = execFileSync('python3', [path.join(PACKAGE_ROOT, 'bench', 'request-latency.py'), `${r}/${file}`, `${r}/usr/lib`, String(gap)], { encoding: 'utf8' });
      const m = JSON.parse(out) as Record<string, { median: number; p90: number }>;
      const cell = (k: string) => `${m[k].median.toFixed(0)} / ${m[k].p90.toFixed(0)}`;
      lines.push(`| ${f.label} | ${gap} ms | ${cell('ioctl')} | ${cell('getxattr')} | ${cell('lookup')} |`);
    }
  }
  return lines;
}

async function main(): Promise<void> {
  if (process.argv[2] === 'timeouts') return timeouts();
  const rounds = Number(process.argv[2] ?? 15);
  const flavours: Flavour[] = [];
  try {
    flavours.push({ label: 'native', root: await makeBenchRoot('native') });
    flavours.push({ label: 'view (kernel)', root: await makeBenchRoot('view', { config: 'fuse_session = kernel\n' }) });
    flavours.push({ label: 'view (libfuse2)', root: await makeBenchRoot('view', { config: 'fuse_session = libfuse2\n' }) });
    flavours.push({ label: 'bindfs', root: await makeBenchRoot('bindfs') });
    const kernel = flavours[1].root;

    // Fill both stores: each program a few times through each view, then let copies land.
    for (const f of flavours.slice(1, 3)) {
      for (let i = 0; i < 3; i++) {
        for (const l of LAUNCHES) execFileSync('sh', ['-c', chrootCommand(f.root.sandbox.root, l.argv) + ' >/dev/null']);
      }
      await settleFills(f.root);
    }
    // Once more each after the fills, so that every flavour starts warm.
    for (const f of flavours) for (const l of LAUNCHES) execFileSync('sh', ['-c', chrootCommand(f.root.sandbox.root, l.argv) + ' >/dev/null']);

    const lines: string[] = [];
    const load = () => fs.readFileSync('/proc/loadavg', 'utf8').trim().split(' ').slice(0, 3).join(' ');
    lines.push(`Load average at start: ${load()}. ${rounds} paired rounds, 5 timed runs per flavour per round (hyperfine -N --runs 5 --warmup 1).`, '');

    // Requests that reach the kernel view per warm launch.
    const perLaunch: string[] = [];
    for (const l of LAUNCHES) {
      const before = kernel.view!.state()!.requests;
      for (let i = 0; i < 10; i++) execFileSync('sh', ['-c', chrootCommand(kernel.sandbox.root, l.argv) + ' >/dev/null']);
      await new Promise((r) => setTimeout(r, 2300)); // one state flush (access_flush_ms default)
      const after = kernel.view!.state()!.requests;
      const d = Object.entries(after)
        .map(([k, v]) => [k, v - (before[k] ?? 0)] as const)
        .filter(([, v]) => v > 0)
        .map(([k, v]) => `${k} ${(v / 10).toFixed(1)}`);
      perLaunch.push(`| \`${l.label}\` | ${d.join(', ') || 'none'} |`);
    }

    const latency = requestLatency(flavours);

    // Paired rounds.
    const ratios = new Map<string, number[][]>(); // program -> per flavour (not native) -> ratios
    const absolute = new Map<string, number[][]>(); // program -> per flavour -> medians per round
    for (const l of LAUNCHES) {
      ratios.set(l.label, flavours.slice(1).map(() => []));
      absolute.set(l.label, flavours.map(() => []));
    }
    for (let round = 0; round < rounds; round++) {
      for (const l of LAUNCHES) {
        const order = round % 2 ? [...flavours].reverse() : flavours;
        const results = hyperfine(order.map((f) => chrootCommand(f.root.sandbox.root, l.argv)), { runs: 5, warmup: 1 });
        const byLabel = new Map(order.map((f, i) => [f.label, results[i].median]));
        const native = byLabel.get('native')!;
        flavours.forEach((f, i) => absolute.get(l.label)![i].push(byLabel.get(f.label)!));
        flavours.slice(1).forEach((f, i) => ratios.get(l.label)![i].push(byLabel.get(f.label)! / native));
      }
    }
    lines.push('Paired rounds: median over rounds of (flavour median / native median in the same round); absolute medians of the round medians.', '');
    lines.push(`| program | native | ${flavours.slice(1).map((f) => f.label).join(' | ')} | ${flavours.slice(1).map((f) => `${f.label} / native`).join(' | ')} |`);
    lines.push(`|---|${flavours.map(() => '---|').join('')}${flavours.slice(1).map(() => '---|').join('')}`);
    for (const l of LAUNCHES) {
      const abs = absolute.get(l.label)!.map((xs) => ms(median(xs)));
      const rs = ratios.get(l.label)!.map((xs) => `${median(xs).toFixed(3)}× (${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)})`);
      lines.push(`| \`${l.label}\` | ${abs.join(' | ')} | ${rs.join(' | ')} |`);
    }

    // One plain hyperfine run per program, for comparison.
    lines.push('', 'One hyperfine run per program (hyperfine -N --runs 30 --warmup 5, commands in the order native, kernel, libfuse2, bindfs):', '');
    lines.push(`| program | ${flavours.map((f) => f.label).join(' | ')} | ${flavours.slice(1).map((f) => `${f.label} / native`).join(' | ')} |`);
    lines.push(`|---|${flavours.map(() => '---|').join('')}${flavours.slice(1).map(() => '---|').join('')}`);
    for (const l of LAUNCHES) {
      const r = hyperfine(flavours.map((f) => chrootCommand(f.root.sandbox.root, l.argv)), { runs: 30, warmup: 5 });
      lines.push(`| \`${l.label}\` | ${r.map((x) => ms(x.median)).join(' | ')} | ${r.slice(1).map((x) => `${(x.median / r[0].median).toFixed(3)}×`).join(' | ')} |`);
    }

    lines.push('', 'Requests reaching the kernel view per warm launch (mean of 10 launches, from the view\'s request counts):', '');
    lines.push('| program | requests per launch |', '|---|---|', ...perLaunch);
    lines.push('', ...latency);
    const total = kernel.view!.state()!.requests;
    lines.push('', `All requests the kernel view got during the whole run: ${Object.entries(total).map(([k, v]) => `${k} ${v}`).join(', ')}.`);
    lines.push('', `Load average at end: ${load()}.`);
    process.stdout.write(lines.join('\n') + '\n');
  } finally {
    for (const f of flavours.reverse()) await f.root.dispose().catch((e) => process.stderr.write(`cleanup: ${e}\n`));
  }
}

main().catch((err) => {
  process.stderr.write(`${err.stack ?? err}\n`);
  process.exit(1);
});
