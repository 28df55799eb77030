/** The `fscache` command: argument parsing and the verbs, each calling into fs/ or elf/. */
import '../core/held-signals'; // first: a supervisor woken from its rest takes its signals at once
import { Command, CommanderError } from 'commander';
import * as fs from 'fs';
import * as path from 'path';
import { renderDefaultConfig } from '../core/config';
import { errnoCode, EXIT_CODES, EXIT_MEANINGS, FsCacheError } from '../core/errors';
import { PACKAGE_ROOT } from '../core/package-root';
import { contextFrom, GlobalOptions } from './context';
import { exitCodeFor as elfExitCode, registerElfVerbs } from './elf-verbs';
import { registerHookVerbs } from './hook-verbs';

// Each verb loads its own modules when it runs: start-up stays short for sync, status
// and the init scripts. The long-lived processes (mount, start --foreground, daemon) load
// everything at start, before the link may point at the view, never later: a load through
// the view from the view's own process waits for itself.
const demo = () => import('./demo');
const ops = () => import('./ops');
const pkg = () => import('./pkg');
const status = () => import('./status');

// The local time zone is read (/etc/localtime, a link into /usr/share/zoneinfo) when the
// first date is formatted, even by toISOString; measured: the supervisor's first one came
// after the switch. Read it now.
new Date().toISOString();

/** The version of the package that is running (its package.json, read once at start). */
const VERSION = (JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;

const program = new Command();
program
  .name('fscache')
  .version(VERSION, '-V, --version', 'print the version and exit')
  .description('A flash cache of /usr served through a FUSE view, for hardened and small Linux systems.')
  .option('--root <dir>', 'root prefix R: every path lives under it (default: $FSCACHE_ROOT or /)')
  .option('--config <file>', 'config file (default: R/etc/fscache.conf)')
  .exitOverride()
  .addHelpText('after', exitCodeHelp());

/** The exit-code table of --help, from core/errors.ts (two columns: 0-3, then 4-7). */
function exitCodeHelp(): string {
  const rows = (Object.keys(EXIT_CODES) as Array<keyof typeof EXIT_CODES>).sort((a, b) => EXIT_CODES[a] - EXIT_CODES[b])
    .map((k) => `${EXIT_CODES[k]}  ${EXIT_MEANINGS[k]}`);
  const half = Math.ceil(rows.length / 2);
  return '\nExit codes:\n' + rows.slice(0, half).map((r, i) => `  ${r.padEnd(28)} ${rows[half + i] ?? ''}`.trimEnd()).join('\n');
}

const globals = (): GlobalOptions => program.opts<GlobalOptions>();
let exitCode = 0;

program
  .command('demo')
  .description('build a sandbox root from this machine\'s /usr (read-only), run programs through the view, show what happened, clean up')
  .action(async () => {
    exitCode = await (await demo()).demoVerb();
  });

program
  .command('mount')
  .description('run the FUSE view of the real tree at R/usr.view in the foreground (SIGTERM: detach, serve until the last user is gone)')
  .action(async () => (await import('./mount')).mountVerb(contextFrom(globals())));

program
  .command('setup')
  .description('one time: move R/usr to R/usr.real and make R/usr a link to it (rolled back on failure)')
  .option('--yes', 'do it (without: only say what would be done)')
  .action(async (opts: { yes?: boolean }) => (await ops()).setupVerb(contextFrom(globals()), !!opts.yes));

program
  .command('start')
  .description('mount the view, check it, switch R/usr to it (mirror mode: to the flash copy); idempotent')
  .option('--foreground', 'run the supervisor in the foreground until SIGTERM (what init systems run; tells systemd when R/usr is switched)')
  .option('--wait', 'wait until the supervisor an init system started has switched R/usr (exit 0), or its first launch failed (exit 4); starts nothing')
  .action(async (opts: { foreground?: boolean; wait?: boolean }) => {
    const ctx = contextFrom(globals());
    const { startVerb, configArgs } = await ops();
    exitCode = await startVerb(ctx, opts.wait ? 'wait' : opts.foreground ? 'foreground' : 'detach', configArgs(ctx, globals().config));
  });

program
  .command('stop')
  .description('switch R/usr back to the real tree, then detach the view; programs using it keep running; idempotent')
  .action(async () => (await ops()).stopVerb(contextFrom(globals())));

program
  .command('pause')
  .description('before a package transaction: switch R/usr to the real tree and keep it there until resume (the hooks start installs run it)')
  .option('--holder <name>', 'who pauses; R/usr goes back when every holder has resumed', 'manual')
  .action(async (opts: { holder: string }) => (await pkg()).pauseVerb(contextFrom(globals()), opts.holder));

program
  .command('resume')
  .description('after a package transaction: switch R/usr back to the view (mirror mode: sync the mirror first; if that fails R/usr stays on the real tree)')
  .option('--holder <name>', 'end only this holder\'s pause (default: every pause)')
  .action(async (opts: { holder?: string }) => (await pkg()).resumeVerb(contextFrom(globals()), opts.holder));

program
  .command('sync')
  .description('rsync the real tree to flash: the cached files (view mode) or the whole tree (mirror mode)')
  .option('--dry-run', 'show what would be transferred')
  .action(async (opts: { dryRun?: boolean }) => {
    exitCode = await (await ops()).syncVerb(contextFrom(globals()), !!opts.dryRun);
  });

program
  .command('status')
  .description('show mode, link, view, store, watcher; exit 0 healthy, 4 degraded, 7 stopped')
  .option('--json', 'machine-readable output (with a schema version)')
  .option('--check', 'one line with perfdata, Nagios plugin exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN')
  .option('--prometheus', 'node_exporter textfile-collector text; exit 0 when written')
  .option('--prometheus-file <file>', 'write that text to FILE atomically (for the textfile collector\'s directory)')
  .action(async (opts: { json?: boolean; check?: boolean; prometheus?: boolean; prometheusFile?: string }) => {
    const { checkLine, collectStatus, prometheusText, renderStatus, statusExitCode, unknownLine } = await status();
    if ([opts.json, opts.check, opts.prometheus || opts.prometheusFile].filter(Boolean).length > 1) {
      throw new FsCacheError('usage', 'status: choose one of --json, --check, --prometheus');
    }
    if (opts.check) {
      // A check that cannot even read its config is UNKNOWN, not a usage error: the monitor must see 0-3 only.
      let r: { code: number; line: string };
      try {
        r = checkLine(collectStatus(contextFrom(globals())));
      } catch (err) {
        r = unknownLine(err);
      }
      process.stdout.write(r.line + '\n');
      exitCode = r.code;
      return;
    }
    const report = collectStatus(contextFrom(globals()));
    if (opts.prometheusFile) {
      (await import('../core/write-atomic')).writeAtomic(path.resolve(opts.prometheusFile), prometheusText(report), 0o644);
    } else if (opts.prometheus) {
      process.stdout.write(prometheusText(report));
    } else {
      process.stdout.write((opts.json ? JSON.stringify(report, null, 2) : renderStatus(report)) + '\n');
      exitCode = statusExitCode(report);
    }
  });

program
  .command('verify')
  .description('hash every flash copy and compare it with the index and the real file; exit 4 if any is corrupt or stale')
  .option('--fix', 'drop corrupt and stale copies')
  .option('--json', 'machine-readable output')
  .action(async (opts: { fix?: boolean; json?: boolean }) => {
    const { paths, log, config } = contextFrom(globals());
    const r = (await import('../fs/store/verify')).verifyStore(paths, log, !!opts.fix);
    if (opts.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
    else {
      process.stdout.write(`${r.checked} copies checked: ${r.good} good, ${r.corrupt.length} corrupt, ${r.stale.length} stale${opts.fix ? `, ${r.dropped} dropped` : ''}\n`);
      for (const p of r.corrupt) process.stdout.write(`corrupt  ${p}\n`);
      for (const p of r.stale) process.stdout.write(`stale    ${p}\n`);
      // Copies are compared with the real tree; R/usr itself shows images in place of served libraries.
      if (config.hook === 'on' && config.serveImages === 'on') {
        process.stdout.write(`note: R/usr shows randomized images under the libraries' names: check packages (debsums, qcheck) against ${paths.realTree}\n`);
      }
    }
    exitCode = r.corrupt.length + r.stale.length > r.dropped ? EXIT_CODES.degraded : EXIT_CODES.ok;
  });

registerElfVerbs(program, () => contextFrom(globals()).paths);
registerHookVerbs(program);

program
  .command('version')
  .description('print the version (as --version)')
  .action(() => void process.stdout.write(VERSION + '\n'));

program
  .command('config')
  .description('print the config file with every key, its default and allowed values')
  .option('--check', 'read the config as start does and check what start needs (exit 2 bad value, 3 untrusted or not set up, 5 missing), change nothing')
  .option('--show', 'with --check: print every key with its effective value')
  .action(async (opts: { check?: boolean; show?: boolean }) => {
    if (!opts.check) return void process.stdout.write(renderDefaultConfig());
    (await import('./config-check')).configCheckVerb(contextFrom(globals()), !!opts.show);
  });

function exitFor(err: unknown): number {
  if (err instanceof CommanderError) {
    // Commander printed its own parse errors; one raised by a verb's action is printed here.
    if (err.code === 'commander.invalidArgument' && !err.message.startsWith('error:')) process.stderr.write(`fscache: ${err.message}\n`);
    return err.exitCode === 0 ? 0 : EXIT_CODES.usage;
  }
  if (err instanceof FsCacheError) {
    process.stderr.write(`fscache: ${err.message}\n`);
    return EXIT_CODES[err.kind];
  }
  const elfCode = elfExitCode(err);
  if (elfCode !== undefined) {
    process.stderr.write(`fscache: ${(err as Error).message}\n`);
    return elfCode;
  }
  // A file the user named that cannot be used: one line, a usage error.
  const code = errnoCode(err);
  if (code && ['ENOENT', 'ENOTDIR', 'EISDIR', 'EACCES', 'EPERM', 'ELOOP', 'ENAMETOOLONG'].includes(code)) {
    process.stderr.write(`fscache: ${(err as Error).message}\n`);
    return EXIT_CODES.usage;
  }
  process.stderr.write(`fscache: ${(err as Error)?.stack ?? err}\n`);
  return EXIT_CODES.internal;
}

/**
 * Exits with `code` once stdout and stderr have written out what they hold: to a pipe Node writes
 * asynchronously, and exiting at once cut `status --json` of a large epoch at 219264 bytes.
 */
function exitWhenWritten(code: number): void {
  let pending = 2;
  const written = () => {
    if (--pending === 0) process.exit(code);
  };
  process.stdout.write('', written);
  process.stderr.write('', written);
}

program.parseAsync(process.argv).then(
  () => exitWhenWritten(exitCode),
  (err) => exitWhenWritten(exitFor(err)),
);
