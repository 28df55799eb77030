/**
 * status for monitoring systems, in a sandbox root: `--check` as a Nagios plugin (one line,
 * perfdata, exit 0-3 only), `--prometheus` as node_exporter textfile-collector text (valid
 * exposition format, written atomically with --prometheus-file), `--json` with its schema
 * version; stopped, running healthy, paused (degraded) and a config it cannot read.
 */
import * as fs from 'fs';
import * as path from 'path';
import { createOpsSandbox, OpsSandbox } from './helpers/ops-sandbox';
import { fuseAvailable, waitFor } from './helpers/view-sandbox';
import { afterEachDispose } from './helpers/cleanup';

const skip = fuseAvailable();
const maybe = skip ? describe.skip : describe;
if (skip) console.warn(`status monitoring tests with a running view skipped: ${skip}`);

/** Checks the text exposition format: every sample's metric has HELP and TYPE, values are numbers, no duplicates. */
function parseProm(text: string): Map<string, number> {
  const typed = new Set<string>();
  const helped = new Set<string>();
  const samples = new Map<string, number>();
  expect(text.endsWith('\n')).toBe(true);
  for (const line of text.trimEnd().split('\n')) {
    const meta = /^# (HELP|TYPE) ([a-z_:][a-z0-9_:]*) (.+)$/.exec(line);
    if (meta) {
      (meta[1] === 'HELP' ? helped : typed).add(meta[2]);
      if (meta[1] === 'TYPE') expect(['gauge', 'counter']).toContain(meta[3]);
      continue;
    }
    const m = /^([a-z_:][a-z0-9_:]*)(\{(?:[a-z_]+="(?:[^"\\\n]|\\.)*",?)*\})? (-?[0-9.e+]+)$/.exec(line);
    if (!m) throw new Error(`not exposition format: ${JSON.stringify(line)}`);
    expect(typed.has(m[1]) && helped.has(m[1])).toBe(true);
    if (m[1].endsWith('_total')) expect(Number(m[3])).toBeGreaterThanOrEqual(0);
    const key = m[1] + (m[2] ?? '');
    expect(samples.has(key)).toBe(false);
    samples.set(key, Number(m[3]));
  }
  return samples;
}

/** A Nagios plugin's output: one line, "FSCACHE LEVEL - text | perfdata" with label=value[UOM][;...]. */
function parseCheck(stdout: string): { level: string; text: string; perf: Record<string, string> } {
  const lines = stdout.split('\n').filter(Boolean);
  expect(lines).toHaveLength(1);
  const m = /^FSCACHE (OK|WARNING|CRITICAL|UNKNOWN) - ([^|]*?)(?: \| (.*))?$/.exec(lines[0]);
  if (!m) throw new Error(`not a plugin line: ${lines[0]}`);
  const perf: Record<string, string> = {};
  for (const p of (m[3] ?? '').split(' ').filter(Boolean)) {
    const pm = /^([a-z_]+)=(\d+(?:c|B)?)(;[^;]*){0,4}$/.exec(p);
    if (!pm) throw new Error(`bad perfdata: ${p}`);
    perf[pm[1]] = pm[2];
  }
  return { level: m[1], text: m[2], perf };
}

describe('status for monitoring (nothing running)', () => {
  let ops: OpsSandbox | undefined;
  afterEachDispose(() => ops, () => (ops = undefined));

  test('stopped: --check CRITICAL (2), --prometheus up 0, --prometheus-file atomic, --json schema 1', () => {
    ops = createOpsSandbox();
    expect(ops.cli(['setup', '--yes']).code).toBe(0);
    const check = ops.cli(['status', '--check']);
    expect(check.code).toBe(2);
    expect(parseCheck(check.stdout)).toMatchObject({ level: 'CRITICAL', text: expect.stringMatching(/^view mode, stopped/) });

    const prom = ops.cli(['status', '--prometheus']);
    expect(prom.code).toBe(0);
    const samples = parseProm(prom.stdout);
    expect(samples.get('fscache_up')).toBe(0);
    expect(samples.get('fscache_state{state="stopped"}')).toBe(1);
    expect([...samples].filter(([k, v]) => k.startsWith('fscache_state{') && v === 1)).toHaveLength(1);
    expect(samples.get(`fscache_info{root="${ops.root}",mode="view",session="",schema="1"}`)).toBe(1);

    const dir = path.join(ops.root, 'var', 'lib', 'node_exporter');
    fs.mkdirSync(dir, { recursive: true });
    const file = path.join(dir, 'fscache.prom');
    fs.writeFileSync(file, 'old\n');
    const written = ops.cli(['status', '--prometheus-file', file]);
    expect(written).toMatchObject({ code: 0, stdout: '' });
    expect(fs.readFileSync(file, 'utf8')).toBe(prom.stdout);
    expect(fs.statSync(file).mode & 0o777).toBe(0o644);
    expect(fs.readdirSync(dir)).toEqual(['fscache.prom']); // no temporary left beside it

    const json = ops.cli(['status', '--json']);
    expect(json.code).toBe(7);
    expect(JSON.parse(json.stdout)).toMatchObject({ schema: 1, health: 'stopped' });
    expect(ops.cli(['status', '--json', '--check']).code).toBe(2); // one rendering at a time: a usage error
  });

  test('a config status cannot read: --check UNKNOWN (3), one line', () => {
    ops = createOpsSandbox();
    fs.writeFileSync(path.join(ops.root, 'etc', 'fscache.conf'), 'mode = turbo\n');
    const check = ops.cli(['status', '--check']);
    expect(check.code).toBe(3);
    expect(parseCheck(check.stdout)).toMatchObject({ level: 'UNKNOWN', text: expect.stringMatching(/bad value 'turbo' for mode/) });
    expect(ops.cli(['status']).code).toBe(2); // the plain verb keeps the project's table
  });
});

maybe('status for monitoring (a running view)', () => {
  let ops: OpsSandbox | undefined;
  afterEachDispose(() => ops, () => (ops = undefined));

  test('healthy: OK (0) with perfdata and up 1; paused: WARNING (1); stopped again: CRITICAL (2)', async () => {
    ops = createOpsSandbox({ config: 'hook = off\n' });
    expect(ops.cli(['setup', '--yes']).code).toBe(0);
    ops.bindHostUsr();
    expect(ops.cli(['start']).code).toBe(0);
    // The supervisor's first good probe makes it healthy.
    expect(await waitFor(() => ops!.cli(['status', '--check']).code === 0, 15000, 250)).toBeGreaterThanOrEqual(0);
    const ok = parseCheck(ops.cli(['status', '--check']).stdout);
    expect(ok).toMatchObject({ level: 'OK', text: 'view mode, healthy' });
    expect(ok.perf).toMatchObject({ opens: expect.stringMatching(/^\d+c$/), hits: expect.stringMatching(/c$/), misses: expect.stringMatching(/c$/), restarts: '0c' });
    const samples = parseProm(ops.cli(['status', '--prometheus']).stdout);
    expect(samples.get('fscache_up')).toBe(1);
    expect(samples.get('fscache_state{state="healthy"}')).toBe(1);
    expect(samples.get('fscache_view_mounted')).toBe(1);
    expect(samples.get('fscache_supervisor_restarts_total')).toBe(0);
    expect(samples.has('fscache_view_opens_total')).toBe(true);
    expect(samples.has('fscache_index_rebuilds_total')).toBe(true);
    expect(samples.get('fscache_hook_refusals')).toBe(0);

    expect(ops.cli(['pause', '--holder', 'test']).code).toBe(0);
    const paused = ops.cli(['status', '--check']);
    expect(paused.code).toBe(1);
    expect(parseCheck(paused.stdout)).toMatchObject({ level: 'WARNING', text: expect.stringMatching(/^view mode, degraded \(paused\): paused by /) });
    expect(parseProm(ops.cli(['status', '--prometheus']).stdout).get('fscache_state{state="paused"}')).toBe(1);
    expect(ops.cli(['resume']).code).toBe(0);

    expect(ops.cli(['stop']).code).toBe(0);
    expect(ops.cli(['status', '--check']).code).toBe(2);
  }, 60000);
});
