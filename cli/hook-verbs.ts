/**
 * Verbs of the loader hook: daemon (foreground), warm, rerandomize, images, hook-enable,
 * hook-disable. Thin: each calls into loader-hook/. Modules are loaded when a verb runs.
 */
import type { Command } from 'commander';
import { contextFrom, GlobalOptions } from './context';

export function registerHookVerbs(program: Command): void {
  const ctx = () => contextFrom(program.opts<GlobalOptions>());

  program
    .command('daemon')
    .description('run the randomization daemon in the foreground: answers the loader hook on R/run/fscache/hook.sock (SIGTERM stops it)')
    .action(async () => {
      const c = ctx();
      // Started by start, its stderr is R/run/fscache/hook-daemon.log (a tmpfs): kept under a megabyte.
      (await import('../core/log')).keepLogBounded((await import('../loader-hook/hook-paths')).hookPaths(c.paths).logFile);
      await (await import('../loader-hook/daemon')).runDaemon(c.paths, c.config, c.log);
    });

  program
    .command('warm')
    .description('pre-randomize every eligible library in the configured library directories, so launches hit')
    .action(async () => {
      const c = ctx();
      const { ImageStore } = await import('../loader-hook/images');
      const store = new ImageStore(c.paths, c.config, c.log);
      try {
        store.ensureEpoch();
        const libs = store.candidates();
        const counts = { made: 0, present: 0, passed: 0, refused: 0 };
        const tty = process.stderr.isTTY;
        const { SingleBar, Presets } = await import('cli-progress');
        const bar = tty ? new SingleBar({ format: 'warm [{bar}] {value}/{total} {lib}', stream: process.stderr }, Presets.shades_classic) : undefined;
        bar?.start(libs.length, 0, { lib: '' });
        for (const lib of libs) {
          const r = store.makeImage(lib);
          if (r.kind === 'image') counts[r.made ? 'made' : 'present']++;
          else counts[r.kind === 'pass' ? 'passed' : 'refused']++;
          if (bar) bar.increment({ lib: lib.slice(-40) });
          else if (r.kind !== 'image' || r.made) process.stderr.write(`${r.kind === 'image' ? 'randomized' : r.kind} ${lib}${r.kind === 'image' ? '' : `: ${r.reason}`}\n`);
        }
        bar?.stop();
        process.stdout.write(`warm: ${libs.length} libraries: ${counts.made} randomized, ${counts.present} already had an image, ${counts.passed} passed through, ${counts.refused} not eligible\n`);
      } finally {
        store.close();
      }
    });

  program
    .command('rerandomize')
    .description('start a new epoch (fresh random seed): new launches get newly randomized images; old epochs go once unused')
    .action(async () => {
      const c = ctx();
      const { ImageStore } = await import('../loader-hook/images');
      const store = new ImageStore(c.paths, c.config, c.log);
      try {
        process.stdout.write(`epoch ${store.newEpoch()}\n`);
      } finally {
        store.close();
      }
      // Mirror mode: the new epoch's images replace the old ones in the mirror (the view's images follow by themselves).
      await (await import('./ops')).mirrorImages(c);
    });

  program
    .command('images')
    .description('list randomized images, passed-through libraries and the daemon\'s refusals (library, reason, count, last time)')
    .option('--json', 'machine-readable output')
    .action(async (opts: { json?: boolean }) => {
      const c = ctx();
      const { ImageStore, readFailures } = await import('../loader-hook/images');
      const { daemonPid } = await import('../loader-hook/control');
      const { readRefusals } = await import('../loader-hook/refusals');
      const store = new ImageStore(c.paths, c.config, c.log);
      try {
        const report = { epoch: store.currentEpoch()?.epoch ?? null, daemonPid: daemonPid(c.paths) ?? null, images: store.images(), passThroughs: store.passThroughs(), failures: readFailures(store.hp), refusals: readRefusals(store.hp.refusalsFile) };
        if (opts.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
        else {
          process.stdout.write(`epoch ${report.epoch ?? 'none'}, daemon ${report.daemonPid ? `pid ${report.daemonPid}` : 'not running'}\n`);
          for (const i of report.images) process.stdout.write(`image  ${i.source}  epoch ${i.epoch}  ${i.size} bytes  made in ${i.madeMs} ms\n`);
          for (const p of report.passThroughs) process.stdout.write(`pass   ${p.source}  ${p.reason}\n`);
          for (const f of report.failures) process.stdout.write(`failed ${f.source}  ${new Date(f.at).toISOString()}  ${f.message}\n`);
          for (const r of report.refusals) process.stdout.write(`refused ${r.library}  ${r.reason}  ${r.count}x, last ${new Date(r.last).toISOString()}\n`);
        }
      } finally {
        store.close();
      }
    });

  program
    .command('hook-enable')
    .description('install the auditor under R and add LD_AUDIT to R/etc/environment, the systemd drop-in and Gentoo env.d (what start does)')
    .action(async () => printNotes((await import('../loader-hook/env')).enableHook(ctx().paths)));

  program
    .command('hook-disable')
    .description('remove fscache\'s LD_AUDIT entries again (what stop does)')
    .action(async () => printNotes((await import('../loader-hook/env')).disableHook(ctx().paths)));
}

function printNotes(notes: string[]): void {
  for (const note of notes) process.stdout.write(note + '\n');
}
