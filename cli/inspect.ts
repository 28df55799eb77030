/**
 * `fscache inspect`: for each library named (or, with --installed, every shared library under the
 * real tree), whether the randomizer can shuffle it, and what to do when it cannot: rebuild it with
 * the flags (README, "Making libraries randomizable"), not strip it, or nothing (a refusal names
 * what the rewriter cannot handle). With --installed, grouped by the owning package.
 */
import { ElfFormatError, ElfRefusal } from '../elf/errors';
import { FsCacheError } from '../core/errors';
import { installedLibraries, packageOwners } from '../loader-hook/library-census';
import type { Paths } from '../core/paths';
import type { InspectReport } from '../elf/inspect';

export type Verdict = 'randomizable' | 'needs-rebuild' | 'stripped' | 'refused';

/** What an administrator can do about a library, from the randomizer's answer. */
export function verdictOf(rep: InspectReport): Verdict {
  if (rep.randomizable) return 'randomizable';
  const reason = rep.reason ?? '';
  // strip --strip-all drops .symtab, and with it the function boundaries; strip -g keeps them.
  if (/stripped/.test(reason)) return 'stripped';
  // Built without -ffunction-sections (one unit) or linked without --emit-relocs.
  if (/--emit-relocs|movable unit/.test(reason)) return 'needs-rebuild';
  return 'refused';
}

const VERDICT_TEXT: Record<Verdict, string> = {
  randomizable: 'randomizable',
  'needs-rebuild': 'needs rebuilding with -ffunction-sections and -Wl,--emit-relocs',
  stripped: 'stripped (keep .symtab: strip -g, not --strip-all)',
  refused: 'refused',
};

interface Row {
  path: string;
  verdict?: Verdict;
  report?: InspectReport;
  error?: string;
  package?: string;
}

/** Runs the verb; throws a usage error (exit 2) when some named file could not be read, after reporting the others. */
export async function inspectVerb(files: string[], opts: { json?: boolean; installed?: boolean }, paths: () => Paths): Promise<void> {
  const { inspectBytes, readRegularFile } = await import('../elf');
  if (!opts.installed && files.length === 0) throw new FsCacheError('usage', 'name at least one library, or --installed');
  const targets: { path: string; file: string }[] = files.map((f) => ({ path: f, file: f }));
  let owners = new Map<string, string>();
  if (opts.installed) {
    const p = paths();
    const installed = installedLibraries(p);
    targets.push(...installed.map((l) => ({ path: l.usrPath, file: l.file })));
    owners = packageOwners(p, installed.map((l) => l.usrPath));
  }
  const inspect = (file: string) => inspectBytes(readRegularFile(file).bytes); // a FIFO or device is refused, not read
  // One file named: its failure is the verb's (a special file refused: 3; a missing one: 2).
  const single = targets.length === 1 && !opts.installed;
  const failures: unknown[] = [];
  const rows: Row[] = targets.map(({ path, file }) => {
    if (single) return { path, ...withVerdict(inspect(file)) };
    try {
      return { path, ...withVerdict(inspect(file)), package: owners.get(path) };
    } catch (err) {
      failures.push(err);
      return { path, error: (err as Error).message };
    }
  });
  const counts = Object.fromEntries((Object.keys(VERDICT_TEXT) as Verdict[]).map((v) => [v, rows.filter((r) => r.verdict === v).length]));
  if (opts.json) {
    const out = rows.map((r) => ({ path: r.path, package: r.package, verdict: r.verdict, error: r.error, ...r.report }));
    process.stdout.write(JSON.stringify(files.length === 1 && !opts.installed ? out[0] : { libraries: out, counts }, null, 2) + '\n');
  } else {
    printRows(rows, !!opts.installed);
    if (rows.length > 1) {
      const unread = rows.filter((r) => r.error).length;
      process.stdout.write(`${rows.length} libraries: ` + (Object.keys(VERDICT_TEXT) as Verdict[]).map((v) => `${counts[v]} ${v}`).join(', ') +
        (unread ? `, ${unread} unreadable` : '') + '\n');
    }
  }
  const unreadable = rows.filter((r) => r.error);
  for (const r of unreadable) process.stderr.write(`fscache: ${r.path}: ${r.error}\n`);
  // Not randomizable is an answer (exit 0); a file that could not be read is a bad argument (2),
  // one that is no regular file or no ELF file at all is refused (3).
  if (unreadable.length) {
    const kind = failures.every((e) => e instanceof ElfRefusal || e instanceof ElfFormatError) ? 'refused' : 'usage';
    throw new FsCacheError(kind, `${unreadable.length} of ${rows.length} files could not be inspected`);
  }
}

function withVerdict(report: InspectReport): Pick<Row, 'report' | 'verdict'> {
  return { report, verdict: verdictOf(report) };
}

function line(r: Row): string {
  const rep = r.report!;
  if (rep.randomizable) {
    return `${r.path}: randomizable: ${rep.units} units (${rep.joinedSymbols} symbols kept with a neighbour), ` +
      `${rep.entropyBits} bits of entropy, ${rep.textBytes} bytes of .text; touches ${rep.sectionsTouched!.join(' ')}`;
  }
  return `${r.path}: not randomizable: ${rep.reason}` + (r.verdict === 'refused' ? '' : ` (${VERDICT_TEXT[r.verdict!]})`);
}

function printRows(rows: Row[], byPackage: boolean): void {
  const readable = rows.filter((r) => r.report);
  if (!byPackage) {
    for (const r of readable) process.stdout.write(line(r) + '\n');
    return;
  }
  // One block per package, the packages that need work first: what to rebuild is the answer sought.
  const groups = new Map<string, Row[]>();
  for (const r of readable) groups.set(r.package ?? '(no package)', [...(groups.get(r.package ?? '(no package)') ?? []), r]);
  const needsWork = (rs: Row[]) => rs.some((r) => r.verdict !== 'randomizable');
  const names = [...groups.keys()].sort((a, b) => Number(needsWork(groups.get(b)!)) - Number(needsWork(groups.get(a)!)) || (a < b ? -1 : 1));
  for (const name of names) {
    const rs = groups.get(name)!;
    const todo = rs.filter((r) => r.verdict !== 'randomizable').length;
    process.stdout.write(`${name}: ${rs.length - todo} of ${rs.length} randomizable\n`);
    for (const r of rs) process.stdout.write(`  ${line(r)}\n`);
  }
}
