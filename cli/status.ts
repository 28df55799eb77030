/**
 * `fscache status`: what is running and how well, as a table or JSON; exit code for monitoring.
 * For monitoring systems also as a Nagios plugin's one line (--check: 0 OK, 1 WARNING, 2 CRITICAL,
 * 3 UNKNOWN, the codes such checks understand, where the project's own table says 4 and 7) and as
 * node_exporter textfile-collector text (--prometheus). Same report, three renderings.
 */
import * as fs from 'fs';
import * as path from 'path';
import { EXIT_CODES } from '../core/errors';
import { auditorUse, AuditorUse } from '../loader-hook/active';
import { daemonIdle, daemonPid } from '../loader-hook/control';
import { installedAuditor } from '../loader-hook/env';
import { epochSummary, hookPaths, readFailures } from '../loader-hook/images';
import { StoreIndex } from '../fs/store/index-db';
import { silentLogger } from '../core/log';
import { LinkState, readLinkState } from '../fs/switch/link';
import { mirrorMounted } from '../fs/store/mirror';
import { isFuse, mountAt } from '../core/mounts';
import { processAlive, readViewState } from '../fs/service/stale';
import { isPaused, pauseFile } from '../fs/switch/pause';
import { PROBE_FRESH_MS, readSupervisorRecord, SupervisorState } from '../fs/service/supervisor';
import { mirrorMarker } from '../fs/store/sync';
import type { ViewState } from '../fs/view/view-service';
import type { Context } from './context';
import { readMirrorImages } from '../fs/store/mirror-images';

/**
 * What status calls the system, beyond healthy/degraded/stopped: hung (the view does not
 * answer the supervisor's probes), dead-mount (a mount whose view or connection is gone),
 * orphaned (a view serving without its supervisor), draining (after stop, a detached view
 * still serving its last users), paused (a package manager holds R/usr on the real tree).
 */
export type NamedState = 'healthy' | 'degraded' | 'stopped' | 'hung' | 'dead-mount' | 'orphaned' | 'draining' | 'paused';

/** The version of `status --json`'s shape: raised when a field changes meaning or goes away (a new field does not). */
export const STATUS_SCHEMA = 1;

export interface StatusReport {
  schema: typeof STATUS_SCHEMA;
  health: 'healthy' | 'degraded' | 'stopped';
  state: NamedState;
  problems: string[];
  mode: string;
  root: string;
  /** The real tree (host path): what package checksums are checked against. */
  realTree: string;
  link: { path: string; target: string | null; state: LinkState };
  supervisor: Pick<SupervisorState, 'pid' | 'state' | 'restarts' | 'lastFailure' | 'nextRetryAt' | 'lastGoodProbeAt' | 'lastProbeError' | 'restingSince'> | null;
  mirror: { complete: boolean } | null;
  view: { mounted: boolean; pid: number | null; running: boolean; uptimeSeconds: number | null; session: string | null; requests: Record<string, number> };
  store: { entries: number; bytes: number; quota: number; hits: number } | null;
  counters: ViewState['view'] | null;
  fills: ViewState['store'] | null;
  watcher: ViewState['watcher'] | null;
  hook: HookStatus;
}

export interface HookStatus {
  /** LD_AUDIT is in R/etc/environment: what new logins get. */
  enabled: boolean;
  /** The view serves images under the libraries' own names (its state says so): opens of images since it started. */
  servedByView: { opens: number } | null;
  /** Mirror mode: files of the mirror that are images under the libraries' names (0 when unreadable to this user). */
  imagesInMirror: number;
  /** What is active now: processes that have the auditor mapped (and those this user could not look at). */
  active: AuditorUse;
  daemonPid: number | null;
  /** The daemon exited idle (daemon_idle_seconds): the view's next miss has it started again. */
  daemonIdle: boolean;
  epoch: string | null;
  images: { count: number; bytes: number };
  passThroughs: Array<{ source: string; reason: string }>;
  failures: Array<{ source: string; message: string }>;
}

function hookEnabled(ctx: Context): boolean {
  try {
    return fs.readFileSync(path.join(ctx.paths.root, 'etc', 'environment'), 'utf8').includes(installedAuditor(ctx.paths).ldAudit);
  } catch {
    return false;
  }
}

function mayRead(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.R_OK);
    return true;
  } catch {
    return false;
  }
}

/** The loader hook's state, read without changing anything (the index opened read-only). */
function hookStatus(ctx: Context, view: ViewState | undefined): HookStatus {
  const hp = hookPaths(ctx.paths);
  let epoch: string | null = null;
  try {
    epoch = fs.readFileSync(hp.epochFile, 'utf8').split(' ')[0] || null;
  } catch {
    epoch = null;
  }
  const status: HookStatus = {
    enabled: hookEnabled(ctx), servedByView: view?.images ? { opens: view.view.images ?? 0 } : null, imagesInMirror: Object.keys(readMirrorImages(ctx.paths)).length, active: auditorUse(ctx.paths), daemonPid: daemonPid(ctx.paths) ?? null, daemonIdle: daemonIdle(ctx.paths), epoch,
    images: { count: 0, bytes: 0 }, passThroughs: [], failures: readFailures(hp).map(({ source, message }) => ({ source, message })),
  };
  Object.assign(status, epochSummary(ctx.paths.index, epoch));
  return status;
}

/**
 * The supervisor's view of the view, named. Read from the state files and the mount table
 * only: status never touches the view (a hung view would hang status too).
 */
function nameState(ctx: Context, sup: SupervisorState | undefined, staleSupervisor: SupervisorState | undefined,
  view: ViewState | undefined, running: boolean, mounted: boolean, problems: string[]): NamedState | undefined {
  const { paths } = ctx;
  const ago = (t: number) => `${((Date.now() - t) / 1000).toFixed(1)} s ago`;
  const name = (state: NamedState, problem: string): NamedState => {
    problems.push(problem);
    return state;
  };
  if (sup) {
    if (isPaused(paths)) return name('paused', `paused by ${pauseFile(paths)}: ${paths.usrLink} stays on the real tree`);
    const fail = sup.lastFailure;
    if (sup.state === 'serving' || sup.state === 'paused') {
      if (mounted && !running) return name('dead-mount', 'the view is mounted but its process is gone');
      const err = sup.lastProbeError;
      if (err && err.kind === 'dead-connection' && err.at >= (sup.lastGoodProbeAt ?? 0)) return name('dead-mount', `the view's connection is dead (${err.message})`);
      if (sup.lastGoodProbeAt === null || Date.now() - sup.lastGoodProbeAt > PROBE_FRESH_MS) {
        return name('hung', `the view has not answered a probe since ${sup.lastGoodProbeAt ? ago(sup.lastGoodProbeAt) : 'it started'}`);
      }
      return undefined;
    }
    if (sup.state === 'retrying' || sup.state === 'starting') {
      if (fail) problems.push(`the view failed ${ago(fail.at)} (${fail.reason}); ${sup.state === 'retrying' ? 'retrying' : 'restarting'}`);
      if (fail?.kind === 'hang') return 'hung';
      if (fail?.kind === 'dead-connection') return 'dead-mount';
    }
    return undefined;
  }
  if (staleSupervisor) problems.push(`the supervisor (pid ${staleSupervisor.pid}) is gone`);
  if (view && running && view.detached) return name('draining', `the detached view (pid ${view.pid}) serves its last users`);
  if (mounted && !running) return name('dead-mount', 'the view is mounted but its process is gone');
  if (view?.supervisorPid && running && mounted) {
    return name('orphaned', `the view (pid ${view.pid}) serves without its supervisor (pid ${view.supervisorPid}): nothing would switch ${paths.usrLink} back if it failed`);
  }
  return undefined;
}

export function collectStatus(ctx: Context): StatusReport {
  const { paths, config } = ctx;
  const problems: string[] = [];
  const state = readViewState(paths);
  // EPERM from kill(pid, 0) (status as non-root) means alive.
  const running = !!state && processAlive(state.pid);
  // The view's mount point holds the mirror's bind in mirror mode: only a FUSE mount is the view.
  const mounted = isFuse(mountAt(paths.viewMount));
  const link = { path: paths.usrLink, ...readLinkState(paths, config.mode) };
  const hook = hookStatus(ctx, running ? state : undefined);
  if (hook.enabled && !hook.daemonPid) problems.push('LD_AUDIT is set but the randomization daemon is not running (launches load originals)');
  if (hook.servedByView && !hook.daemonPid && !hook.daemonIdle) problems.push('the view serves randomized images but the randomization daemon is not running (libraries without an image load originals)');
  const record = readSupervisorRecord(paths);
  const supervisor = record?.alive ? record.state : undefined;
  const mirrorComplete = fs.existsSync(mirrorMarker(paths));
  let store: StatusReport['store'] = null;
  // The index names every cached path and the seed: root's only (0600). Run by another user,
  // status leaves its figures out rather than call the index unreadable: health is the same for all.
  if (fs.existsSync(paths.index) && mayRead(paths.index)) {
    try {
      const index = StoreIndex.open(paths.index, silentLogger, { readonly: true });
      store = { ...index.totals(), quota: config.quotaBytes };
      index.close();
    } catch (err) {
      problems.push(`index unreadable: ${(err as Error).message}`);
    }
  }
  const named = config.mode === 'view' ? nameState(ctx, supervisor, record && !record.alive ? record.state : undefined, state, running, mounted, problems) : undefined;
  if (running && !mounted && !state?.detached) problems.push('the view process runs but nothing is mounted');
  if (link.state === 'view' && !(running && mounted)) problems.push(`${paths.usrLink} points at the view, but the view is not serving`);
  if (link.state === 'view' && !supervisor) problems.push(`${paths.usrLink} points at the view, but no supervisor watches it`);
  if (config.mode === 'view' && supervisor && link.state !== 'view' && !named) problems.push(`the supervisor is ${supervisor.state}, but ${paths.usrLink} is not on the view`);
  if (link.state === 'mirror' && !mirrorComplete) problems.push('the link points at an incomplete mirror');
  if (link.state === 'mirror' && !mirrorMounted(paths)) problems.push(`${paths.usrLink} points at ${paths.viewMount}, but the mirror is not mounted there (the real tree is served)`);
  if (link.state === 'directory' || link.state === 'foreign' || link.state === 'missing') problems.push(`${paths.usrLink} is ${link.state === 'foreign' ? `a foreign link (${link.target})` : link.state}: run 'fscache setup'`);
  if (state?.storeTrouble) problems.push(state.storeTrouble);
  if (state?.store?.flashTrouble) problems.push(state.store.flashTrouble);
  if (state?.watcher?.trouble) problems.push(state.watcher.trouble);
  // A draining view is what stop leaves behind: not a reason to call the system active.
  const draining = named === 'draining';
  const active = (running && !draining) || mounted || !!supervisor || link.state === 'view' || link.state === 'mirror' || hook.enabled || !!hook.daemonPid;
  // Nothing of fscache running is 'stopped' (problems are still listed, e.g. R/usr a directory).
  const health = !active ? 'stopped' : problems.length ? 'degraded' : 'healthy';
  return {
    schema: STATUS_SCHEMA, health, state: named ?? health, problems, mode: config.mode, root: paths.root, realTree: paths.realTree,
    link,
    supervisor: supervisor ? {
      pid: supervisor.pid, state: supervisor.state, restarts: supervisor.restarts, lastFailure: supervisor.lastFailure, nextRetryAt: supervisor.nextRetryAt,
      lastGoodProbeAt: supervisor.lastGoodProbeAt ?? null, lastProbeError: supervisor.lastProbeError ?? null, restingSince: supervisor.restingSince ?? null,
    } : null,
    mirror: config.mode === 'mirror' ? { complete: mirrorComplete } : null,
    view: {
      mounted, running, pid: state?.pid ?? null, session: state?.session ?? null,
      uptimeSeconds: state && running ? Math.round((Date.now() - state.startedAt) / 1000) : null,
      requests: state?.requests ?? {},
    },
    store, counters: state?.view ?? null, fills: state?.store ?? null, watcher: state?.watcher ?? null,
    hook: hook,
  };
}

export function statusExitCode(report: StatusReport): number {
  return report.health === 'healthy' ? EXIT_CODES.ok : report.health === 'degraded' ? EXIT_CODES.degraded : EXIT_CODES.stopped;
}

const MiB = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;

export function renderStatus(r: StatusReport): string {
  const rows: Array<[string, string]> = [
    ['health', r.state === r.health ? r.health : `${r.health} (${r.state})`],
    ['mode', r.mode],
    ['root', r.root],
    ['link', `${r.link.path} -> ${r.link.target ?? `(${r.link.state})`} (${r.link.state})`],
    ['supervisor', r.supervisor ? `pid ${r.supervisor.pid}, ${r.supervisor.state}${r.supervisor.restingSince ? ' (at rest: guard/rest.c watches)' : ''}, ${r.supervisor.restarts} restarts` +
      (r.supervisor.lastGoodProbeAt ? `, last good probe ${((Date.now() - r.supervisor.lastGoodProbeAt) / 1000).toFixed(1)} s ago` : '') +
      (r.supervisor.lastFailure ? `, last failure: ${r.supervisor.lastFailure.reason}` : '') : 'not running'],
    ['view', r.view.mounted ? `mounted, pid ${r.view.pid}, up ${r.view.uptimeSeconds ?? '?'} s, session ${r.view.session}` : 'not mounted'],
  ];
  if (r.mirror) rows.push(['mirror', r.mirror.complete ? 'complete' : 'incomplete']);
  if (r.store) rows.push(['store', `${r.store.entries} files, ${MiB(r.store.bytes)} of ${MiB(r.store.quota)}, ${r.store.hits} hits recorded`]);
  if (r.counters) {
    const ratio = r.counters.opens ? ((100 * r.counters.hits) / r.counters.opens).toFixed(1) : '0.0';
    rows.push(['opens', `${r.counters.opens} (${r.counters.hits} from flash, ${ratio}% since start)`]);
  }
  if (r.fills) rows.push(['fills', `${r.fills.fills} copies, ${MiB(r.fills.fillBytes)}, ${r.fills.fillFailures} failed, ${r.fills.evictions} evicted, ${r.fills.staleFound} stale copies refused, ${r.fills.corruptFound ?? 0} failed their check`]);
  // The view rebuilt a broken index while serving (it served the real tree meanwhile): say so, it is worth a look at the flash.
  if (r.fills?.indexRebuilds) rows.push(['index', `rebuilt ${r.fills.indexRebuilds} times while serving; last: ${r.fills.indexTrouble ?? '?'}`]);
  if (r.watcher) rows.push(['watcher', `${r.watcher.state}, ${r.watcher.directories} directories, ${r.watcher.invalidations} invalidations`]);
  const mapped = `mapped by ${r.hook.active.processes} processes${r.hook.active.unreadable ? ` (${r.hook.active.unreadable} not visible to this user)` : ''}`;
  const ways = [
    r.hook.servedByView && `served by the view under the libraries' names (${r.hook.servedByView.opens} opens)`,
    r.hook.imagesInMirror > 0 && `${r.hook.imagesInMirror} images written into the mirror under the libraries' names`,
    r.hook.enabled && `LD_AUDIT set, ${mapped}`,
  ].filter(Boolean).join('; ');
  rows.push(['hook', ways ? `${ways}, daemon ${r.hook.daemonPid ? `pid ${r.hook.daemonPid}` : r.hook.daemonIdle ? 'idle (started at the next miss)' : 'not running'}, epoch ${r.hook.epoch ?? 'none'}, ${r.hook.images.count} images (${MiB(r.hook.images.bytes)}), ${r.hook.passThroughs.length} passed through` : `off${r.hook.active.processes ? `, still ${mapped} started while it was on` : ''}`]);
  // What the view shows for a served library is its image: package checksums are for the real tree.
  if (r.hook.servedByView || r.hook.imagesInMirror > 0) rows.push(['checksums', `R/usr shows randomized bytes for served libraries: check packages (debsums, qcheck) against the real tree, ${r.realTree}`]);
  for (const p of r.hook.passThroughs.slice(0, 10)) rows.push(['passed', `${p.source}: ${p.reason}`]);
  for (const f of r.hook.failures.slice(-3)) rows.push(['hook error', `${f.source}: ${f.message}`]);
  for (const p of r.problems) rows.push(['problem', p]);
  const width = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join('\n');
}

/** Nagios plugin exit codes (monitoring-plugins' guidelines). */
export const CHECK_CODES = { ok: 0, warning: 1, critical: 2, unknown: 3 } as const;

/**
 * One line for a Nagios-style check, with perfdata. Stopped, hung and a dead mount are CRITICAL
 * (nothing served, or launches waiting until the supervisor flips R/usr back); any other
 * degradation is a WARNING: programs still start, from the real tree or the view.
 */
export function checkLine(r: StatusReport): { code: number; line: string } {
  const critical = r.health === 'stopped' || r.state === 'hung' || r.state === 'dead-mount';
  const level = r.health === 'healthy' ? 'ok' : critical ? 'critical' : 'warning';
  const what = r.state === r.health ? r.health : `${r.health} (${r.state})`;
  const why = r.problems.length ? `: ${r.problems[0]}${r.problems.length > 1 ? ` (+${r.problems.length - 1} more)` : ''}` : '';
  const perf: string[] = [];
  const c = r.counters;
  if (c) perf.push(`opens=${c.opens}c`, `hits=${c.hits}c`, `misses=${c.misses}c`);
  if (r.store) perf.push(`store_bytes=${r.store.bytes}B;;;0;${r.store.quota}`, `store_files=${r.store.entries}`);
  if (r.supervisor) perf.push(`restarts=${r.supervisor.restarts}c`);
  if (r.fills) perf.push(`index_rebuilds=${r.fills.indexRebuilds ?? 0}c`);
  perf.push(`hook_refusals=${r.hook.passThroughs.length}`);
  // Perfdata is separated by '|'; a problem text must not contain one (nor a newline).
  const text = `FSCACHE ${level.toUpperCase()} - ${r.mode} mode, ${what}${why}`.replace(/[|\n]/g, ' ');
  return { code: CHECK_CODES[level], line: `${text} | ${perf.join(' ')}` };
}

/** The line a check prints when status itself could not be collected (bad config, unreadable state). */
export function unknownLine(err: unknown): { code: number; line: string } {
  return { code: CHECK_CODES.unknown, line: `FSCACHE UNKNOWN - ${(err as Error)?.message ?? String(err)}`.replace(/[|\n]/g, ' ') };
}

const NAMED_STATES: NamedState[] = ['healthy', 'degraded', 'stopped', 'hung', 'dead-mount', 'orphaned', 'draining', 'paused'];

/** Prometheus text exposition format, for node_exporter's textfile collector. */
export function prometheusText(r: StatusReport): string {
  const label = (v: string) => v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
  const out: string[] = [];
  const metric = (name: string, type: 'gauge' | 'counter', help: string, samples: Array<[string, number]>) => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, value] of samples) out.push(`${name}${labels} ${value}`);
  };
  metric('fscache_info', 'gauge', 'Which fscache this is: root prefix, mode, FUSE session, status schema.',
    [[`{root="${label(r.root)}",mode="${label(r.mode)}",session="${label(r.view.session ?? '')}",schema="${r.schema}"}`, 1]]);
  metric('fscache_up', 'gauge', '1 when fscache runs (healthy or degraded), 0 when stopped.', [['', r.health === 'stopped' ? 0 : 1]]);
  metric('fscache_state', 'gauge', "The named state (fscache status): 1 for the current one.",
    NAMED_STATES.map((s) => [`{state="${s}"}`, r.state === s ? 1 : 0]));
  metric('fscache_problems', 'gauge', 'Problems status lists.', [['', r.problems.length]]);
  metric('fscache_view_mounted', 'gauge', '1 when the view is mounted.', [['', r.view.mounted ? 1 : 0]]);
  if (r.view.uptimeSeconds !== null) metric('fscache_view_uptime_seconds', 'gauge', "The view process's age.", [['', r.view.uptimeSeconds]]);
  const c = r.counters;
  if (c) {
    metric('fscache_view_opens_total', 'counter', 'Opens answered by the view since it started.', [['', c.opens]]);
    metric('fscache_view_hits_total', 'counter', 'Opens served from a flash copy.', [['', c.hits]]);
    metric('fscache_view_misses_total', 'counter', 'Opens served from the real tree.', [['', c.misses]]);
    metric('fscache_view_read_bytes_total', 'counter', 'Bytes read through the view, by source.', [['{source="flash"}', c.bytesFromStore], ['{source="real"}', c.bytesFromReal]]);
  }
  if (r.store) {
    metric('fscache_store_files', 'gauge', 'Copies in the flash store.', [['', r.store.entries]]);
    metric('fscache_store_bytes', 'gauge', 'Bytes in the flash store.', [['', r.store.bytes]]);
    metric('fscache_store_quota_bytes', 'gauge', 'The quota config key.', [['', r.store.quota]]);
  }
  const f = r.fills;
  if (f) {
    metric('fscache_fills_total', 'counter', 'Copies made to flash since the view started.', [['', f.fills]]);
    metric('fscache_fill_failures_total', 'counter', 'Copies that failed.', [['', f.fillFailures]]);
    metric('fscache_evictions_total', 'counter', 'Copies evicted under the quota.', [['', f.evictions]]);
    metric('fscache_stale_copies_total', 'counter', 'Copies refused because the real file changed.', [['', f.staleFound]]);
    metric('fscache_corrupt_copies_total', 'counter', 'Copies that failed their content check.', [['', f.corruptFound ?? 0]]);
    metric('fscache_index_rebuilds_total', 'counter', 'Times the index was rebuilt while serving.', [['', f.indexRebuilds ?? 0]]);
  }
  if (r.supervisor) metric('fscache_supervisor_restarts_total', 'counter', 'Views the supervisor restarted.', [['', r.supervisor.restarts]]);
  if (r.watcher) {
    metric('fscache_watcher_directories', 'gauge', 'Directories under inotify watch.', [['', r.watcher.directories]]);
    metric('fscache_watcher_invalidations_total', 'counter', 'Changes the watcher passed on.', [['', r.watcher.invalidations]]);
  }
  metric('fscache_hook_processes', 'gauge', 'Processes that have the auditor mapped (those readable by the collector).', [['', r.hook.active.processes]]);
  metric('fscache_hook_daemon_up', 'gauge', '1 when the randomization daemon runs.', [['', r.hook.daemonPid ? 1 : 0]]);
  metric('fscache_hook_images', 'gauge', "Randomized images of the current epoch.", [['', r.hook.images.count]]);
  metric('fscache_hook_image_bytes', 'gauge', 'Bytes of those images.', [['', r.hook.images.bytes]]);
  metric('fscache_hook_refusals', 'gauge', 'Libraries of the current epoch that load unrandomized (refused).', [['', r.hook.passThroughs.length]]);
  metric('fscache_hook_failures', 'gauge', "The daemon's recent failures.", [['', r.hook.failures.length]]);
  return out.join('\n') + '\n';
}
