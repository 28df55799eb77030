/**
 * A sandbox root with a running view process, for tests. Everything it creates is
 * removed by dispose(), which tests call in afterEach/afterAll so that mounts and
 * processes are cleaned up also when a test fails.
 */
import * as fs from 'fs';
import * as path from 'path';
import { defaultConfig, parseConfig } from '../../core/config';
import { StoreIndex } from '../../fs/store/index-db';
import { silentLogger } from '../../core/log';
import { derivePaths, Paths } from '../../core/paths';
import { isMountPoint } from '../../fs/service/preflight';
import { makeSandbox, Sandbox } from '../../dev/sandbox';
import { startViewProcess, ViewProcess } from '../../fs/service/view-process';
import { execFileSync } from 'child_process';
import { sha } from './hash';

export interface ViewSandbox {
  sandbox: Sandbox;
  paths: Paths;
  view?: ViewProcess;
  startView(): Promise<ViewProcess>;
  /** A path inside the view for a path relative to the real tree. */
  inView(rel: string): string;
  dispose(): Promise<void>;
}

export function fuseAvailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'tests need root (mounts, chroot)';
  if (!fs.existsSync('/dev/fuse')) return '/dev/fuse is missing';
  return undefined;
}

export function createViewSandbox(options: { copy?: boolean; config?: string } = {}): ViewSandbox {
  const sandbox = makeSandbox({ copy: options.copy, prefix: 'fscache-test-' });
  // FSCACHE_TEST_SESSION=kernel|libfuse2 runs the same tests over another FUSE session.
  const session = process.env.FSCACHE_TEST_SESSION;
  const base = options.config ?? '';
  const configText = session && !/^\s*fuse_session\s*=/m.test(base) ? `${base}fuse_session = ${session}\n` : base;
  if (configText) fs.writeFileSync(path.join(sandbox.root, 'etc', 'fscache.conf'), configText);
  const config = configText ? parseConfig(configText, 'test config') : defaultConfig();
  const paths = derivePaths(sandbox.root, config);
  const vs: ViewSandbox = {
    sandbox,
    paths,
    async startView() {
      vs.view = await startViewProcess(sandbox.root, paths.viewMount, paths.viewState);
      return vs.view;
    },
    inView: (rel) => path.join(paths.viewMount, rel),
    async dispose() {
      if (vs.view) await vs.view.stop(10000).catch(() => undefined);
      if (isMountPoint(paths.viewMount)) execFileSync('fusermount', ['-uz', paths.viewMount], { stdio: 'ignore' });
      sandbox.cleanup();
    },
  };
  return vs;
}

/** Polls until `check` returns true or the time is up; returns the milliseconds it took, or -1. */
export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs: number, stepMs = 25): Promise<number> {
  const t0 = Date.now();
  while (Date.now() - t0 <= timeoutMs) {
    if (await check()) return Date.now() - t0;
    await new Promise((r) => setTimeout(r, stepMs));
  }
  return -1;
}

/** Waits until the view reports `n` or more completed fills. */
export async function waitForFills(view: ViewProcess, n: number, timeoutMs = 20000): Promise<void> {
  const ms = await waitFor(() => (view.state()?.store?.fills ?? 0) >= n, timeoutMs, 100);
  if (ms < 0) throw new Error(`fewer than ${n} fills after ${timeoutMs} ms: ${JSON.stringify(view.state()?.store)}`);
}

/** The index row of `rel`, read with a read-only connection of its own. */
export function indexEntry(vs: ViewSandbox, rel: string) {
  const ix = StoreIndex.open(vs.paths.index, silentLogger, { readonly: true });
  try {
    return ix.get(rel);
  } finally {
    ix.close();
  }
}

/** Stops the view (it detaches and exits) and starts a new view process: what a restart does. */
export async function restartView(vs: ViewSandbox): Promise<void> {
  await vs.view?.stop(10000);
  vs.view = undefined;
  await vs.startView();
}

/** Writes `content` at `rel` in the real tree (directories made as needed); returns the file's path. */
/**
 * Overwrites the start of the real tree's `rel` in place (same inode: the hardest case for caches),
 * then returns how many ms passed until the view showed exactly `content` (-1: not within `withinMs`).
 */
export async function rewriteInPlace(vs: ViewSandbox, rel: string, content: Buffer, withinMs = 1500): Promise<number> {
  const fd = fs.openSync(path.join(vs.paths.realTree, rel), 'r+');
  fs.writeSync(fd, content, 0, content.length, 0);
  fs.closeSync(fd);
  const want = sha(content);
  return waitFor(() => sha(fs.readFileSync(vs.inView(rel))) === want, withinMs, 20);
}

/** Replaces the real tree's `rel` by rename, as package managers do; the ms until the view shows `content` (-1: not within `withinMs`). */
export async function replaceByRename(vs: ViewSandbox, rel: string, content: Buffer, withinMs = 1500): Promise<number> {
  const tmp = path.join(vs.paths.realTree, path.dirname(rel), '.tmp-new');
  fs.writeFileSync(tmp, content);
  fs.renameSync(tmp, path.join(vs.paths.realTree, rel));
  const want = sha(content);
  return waitFor(() => sha(fs.readFileSync(vs.inView(rel))) === want, withinMs, 20);
}

export function writeReal(vs: ViewSandbox, rel: string, content: Buffer): string {
  const file = path.join(vs.paths.realTree, rel);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, content);
  return file;
}
