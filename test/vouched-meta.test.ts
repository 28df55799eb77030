/**
 * Metadata answered from memory while inotify vouches for it: every kind of change in
 * the real tree is still seen within a second, and a relaunch after the kernel forgot
 * its caches is answered without reading the real tree's metadata again.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { runInChroot } from '../cli/demo';
import { createViewSandbox, fuseAvailable, ViewSandbox, waitFor } from './helpers/view-sandbox';
import { afterEachDispose } from './helpers/cleanup';

const skip = fuseAvailable();
const maybe = skip ? describe.skip : describe;
if (skip) console.warn(`vouched metadata tests skipped: ${skip}`);

/** One extended attribute as getfattr reads it through the view (undefined when absent). */
function xattrOf(file: string, name: string): string | undefined {
  try {
    return execFileSync('getfattr', ['--only-values', '-n', name, file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return undefined;
  }
}

maybe('vouched metadata', () => {
  let vs: ViewSandbox | undefined;
  afterEachDispose(() => vs, () => (vs = undefined));

  test('changes of every kind are seen through the view within a second', async () => {
    vs = createViewSandbox({ copy: true, config: 'access_flush_ms = 100\n' });
    const real = (rel: string) => path.join(vs!.paths.realTree, rel);
    fs.mkdirSync(real('lib/sub'), { recursive: true });
    fs.writeFileSync(real('lib/a.so'), 'a');
    fs.writeFileSync(real('lib/sub/x'), 'x');
    fs.symlinkSync('a.so', real('lib/link.so'));
    await vs.startView();
    const v = (rel: string) => vs!.inView(rel);
    // Read everything once so that it is vouched.
    expect(fs.readdirSync(v('lib')).sort()).toEqual(['a.so', 'link.so', 'sub']);
    expect(fs.statSync(v('lib/a.so')).mode & 0o777).toBe(0o644);
    expect(fs.readlinkSync(v('lib/link.so'))).toBe('a.so');
    expect(fs.existsSync(v('lib/new.so'))).toBe(false);
    expect(fs.readFileSync(v('lib/sub/x'), 'utf8')).toBe('x');
    expect(xattrOf(v('lib/a.so'), 'user.fscache')).toBeUndefined();
    // Asked at every exec; the kernel session's reader thread answers the second ask itself.
    expect(xattrOf(v('lib/a.so'), 'security.capability')).toBeUndefined();
    expect(xattrOf(v('lib/a.so'), 'security.capability')).toBeUndefined();
    const within = async (what: string, check: () => boolean) => {
      const ms = await waitFor(() => { try { return check(); } catch { return false; } }, 1500, 20);
      expect({ what, seen: ms >= 0 && ms <= 1050 }).toEqual({ what, seen: true });
    };

    // Held open, so that the kernel keeps the node (and its id) across the invalidation.
    const held = fs.openSync(v('lib/a.so'), 'r');
    try {
      execFileSync('setcap', ['cap_net_raw+ep', real('lib/a.so')]);
      await within('file capability set', () => xattrOf(v('lib/a.so'), 'security.capability') !== undefined);
    } finally {
      fs.closeSync(held); // also on failure: an open file keeps the view's connection alive
    }
    fs.chmodSync(real('lib/a.so'), 0o600);
    await within('chmod', () => (fs.statSync(v('lib/a.so')).mode & 0o777) === 0o600);
    execFileSync('setfattr', ['-n', 'user.fscache', '-v', 'set', real('lib/a.so')]);
    await within('xattr set', () => xattrOf(v('lib/a.so'), 'user.fscache') === 'set');
    fs.writeFileSync(real('lib/new.so'), 'new');
    await within('new file', () => fs.readFileSync(v('lib/new.so'), 'utf8') === 'new');
    await within('new file listed', () => fs.readdirSync(v('lib')).includes('new.so'));
    fs.unlinkSync(real('lib/link.so'));
    fs.symlinkSync('new.so', real('lib/link.so'));
    await within('symlink retargeted', () => fs.readlinkSync(v('lib/link.so')) === 'new.so');
    fs.renameSync(real('lib/sub'), real('lib/moved'));
    await within('directory renamed', () => !fs.existsSync(v('lib/sub/x')) && fs.readFileSync(v('lib/moved/x'), 'utf8') === 'x');
    fs.writeFileSync(real('lib/moved/x'), 'changed');
    await within('file in the renamed directory changed', () => fs.readFileSync(v('lib/moved/x'), 'utf8') === 'changed');
    fs.rmSync(real('lib/a.so'));
    await within('file removed', () => !fs.existsSync(v('lib/a.so')));
  });

  test('a relaunch after the kernel dropped its caches reads no metadata from the real tree', async () => {
    vs = createViewSandbox({ config: 'access_flush_ms = 100\n' });
    await vs.startView();
    const argv = ['/usr/bin/perl', '-e', 'print 42'];
    expect((await runInChroot(vs.sandbox, argv)).stdout).toBe('42');
    await new Promise((r) => setTimeout(r, 1500)); // fills land, state is flushed
    expect((await runInChroot(vs.sandbox, argv)).stdout).toBe('42');
    await new Promise((r) => setTimeout(r, 300));
    const before = vs.view!.state()!.view;
    // Drop the kernel's dentries and inodes (the FUSE ones too): lookups come to the view again.
    execFileSync('sh', ['-c', 'sync; echo 2 > /proc/sys/vm/drop_caches']);
    expect((await runInChroot(vs.sandbox, argv)).stdout).toBe('42');
    await new Promise((r) => setTimeout(r, 300));
    const after = vs.view!.state()!.view;
    const fromMemory = after.metaFromMemory - before.metaFromMemory;
    const fromReal = after.metaFromReal - before.metaFromReal;
    console.log(`relaunch after drop_caches: ${fromMemory} metadata answers from memory, ${fromReal} from the real tree`);
    expect(fromMemory).toBeGreaterThan(10);
    expect(fromReal).toBe(0);
  });
});
