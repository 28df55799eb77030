/**
 * The randomized libraries' parts of `fscache demo`. The loader hook's: a small randomizable library and a program using it
 * are built with this machine's gcc under R/opt/fscache-demo (the only directory in the demo's
 * library_dirs), then launched in the chroot of R with the LD_AUDIT value `start` wrote to
 * R/etc/environment. The evidence is read from outside, from /proc/PID/maps of the running
 * processes: the first launch maps the original (no image yet; the hook asks the daemon), two
 * later launches running at once map the epoch's image, the same inode, and print the original's
 * checksum with their functions at shuffled offsets. The view's (demoServed): the same library
 * built into the real tree's /usr/lib/fscache-demo and a setuid-root program using it, run as
 * nobody with an empty environment (ld.so's secure mode: no auditor could load); once the daemon
 * made the image, the program maps the library's own path through the view, randomized.
 */
import { ChildProcess, execFileSync, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { PACKAGE_ROOT } from '../core/package-root';
import type { Paths } from '../core/paths';
import type { Sandbox } from '../dev/sandbox';
import { identityOf } from '../core/identity';
import { hookPaths, keyOf } from '../loader-hook/images';

/** Relative to R; the demo writes it as its config's only library_dirs entry. */
export const DEMO_LIB_DIR = 'opt/fscache-demo/lib';
/** Relative to R, inside the real tree's side of R/usr: the view serves its library's image. */
export const DEMO_SERVED_DIR = 'usr/lib/fscache-demo';
const LIB = 'libfscachedemo.so';
const SRC = path.join(PACKAGE_ROOT, 'loader-hook', 'demo');

interface Held {
  pid: number;
  /** The library's executable mapping as /proc/PID/maps shows it from outside the chroot. */
  mapped: string;
  inode: number;
  checksum: string;
  /** Function names sorted by their offset from the library's base. */
  order: string[];
  /** Real and effective uid (/proc/PID/status). */
  uids: string;
  release(): Promise<void>;
}

/** The LD_AUDIT value of R/etc/environment (what a login in R would get), if set. */
function ldAuditOf(paths: Paths): string | undefined {
  try {
    return /^LD_AUDIT=["']?([^"'\n]+)/m.exec(fs.readFileSync(path.join(paths.root, 'etc', 'environment'), 'utf8'))?.[1];
  } catch {
    return undefined;
  }
}

/**
 * Builds the library into `lib` and the program as `program` (host paths), the program finding the
 * library by RUNPATH `runpath` (as seen in R); ms taken.
 */
function build(lib: string, program: string, runpath: string): number {
  const t0 = Date.now();
  for (const d of [lib, path.dirname(program)]) fs.mkdirSync(d, { recursive: true, mode: 0o755 });
  // What the randomizer needs: a section per function, and the static relocations kept in the output.
  execFileSync('gcc', ['-O2', '-fPIC', '-ffunction-sections', '-fno-inline', '-shared', '-Wl,--emit-relocs', `-Wl,-soname,${LIB}`,
    '-o', path.join(lib, LIB), path.join(SRC, 'libfscachedemo.c')], { stdio: 'pipe' });
  // The daemon randomizes only root-owned files that others may read but not write.
  fs.chmodSync(path.join(lib, LIB), 0o644);
  execFileSync('gcc', ['-O2', '-o', program, path.join(SRC, 'hookdemo.c'), `-Wl,-rpath,${runpath}`,
    `-L${lib}`, '-lfscachedemo'], { stdio: 'pipe' });
  return Date.now() - t0;
}

/** Launches the program in the chroot and keeps it running (holding its mappings) until release(). */
function launchHeld(sandbox: Sandbox, argv: string[], env: Record<string, string>, children: Set<ChildProcess>): Promise<Held> {
  const [cmd, args] = sandbox.chrootArgs([...argv, 'hold']);
  const c = spawn(cmd, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
  children.add(c);
  const exited = new Promise<void>((r) => c.once('close', () => { children.delete(c); r(); }));
  const release = () => {
    c.stdin!.end();
    return exited;
  };
  let out = '';
  let err = '';
  c.stderr!.on('data', (d) => (err += d));
  return new Promise<Held>((resolve, reject) => {
    const timer = setTimeout(() => fail('no answer within 10 s'), 10000);
    const fail = (why: string) => {
      clearTimeout(timer);
      c.kill('SIGKILL');
      reject(new Error(`hookdemo: ${why}${err ? `: ${err.trim()}` : ''}`));
    };
    c.once('exit', (code) => fail(`exited with ${code}`));
    c.stdout!.on('data', (d) => {
      out += d;
      if (!out.includes('ready\n')) return;
      clearTimeout(timer);
      c.removeAllListeners('exit');
      // Read while it runs: the kernel's view of what the process mapped, as seen from outside the chroot.
      const maps = fs.readFileSync(`/proc/${c.pid}/maps`, 'utf8');
      const uids = /^Uid:\s+(\d+)\s+(\d+)/m.exec(fs.readFileSync(`/proc/${c.pid}/status`, 'utf8'));
      const m = /^\S+ r-xp \S+ \S+ (\d+) +(\S+)$/m.exec(maps.split('\n').filter((l) => l.includes(`/${LIB}`) || l.includes('/fscache/images/')).join('\n'));
      const offsets = [...out.matchAll(/^fn (\w+) ([0-9a-f]+)$/gm)].map((x) => ({ name: x[1], at: parseInt(x[2], 16) }));
      resolve({
        pid: c.pid!,
        mapped: m ? m[2] : '(not mapped)',
        inode: m ? Number(m[1]) : 0,
        checksum: /^checksum (\d+)$/m.exec(out)?.[1] ?? '?',
        order: offsets.sort((a, b) => a.at - b.at).map((x) => x.name),
        uids: uids ? `uid ${uids[1]} euid ${uids[2]}` : '?',
        release,
      });
    });
  });
}

/** Runs the hook part, printing with `say`; false when the evidence does not hold. */
export async function demoHook(sandbox: Sandbox, paths: Paths, say: (s: string) => void, children: Set<ChildProcess>): Promise<boolean> {
  const R = (p: string) => (p.startsWith(paths.root + '/') ? 'R' + p.slice(paths.root.length) : p);
  const ldAudit = ldAuditOf(paths);
  say(`\nloader hook: LD_AUDIT=${ldAudit ?? '(not set)'} in R/etc/environment (written by start); library_dirs = ${DEMO_LIB_DIR}`);
  if (!ldAudit) return false;
  const ms = build(path.join(paths.root, DEMO_LIB_DIR), path.join(paths.root, 'opt/fscache-demo/bin/hookdemo'), `/${DEMO_LIB_DIR}`);
  say(`  built R/${DEMO_LIB_DIR}/${LIB} (8 functions, -ffunction-sections -Wl,--emit-relocs) and R/opt/fscache-demo/bin/hookdemo with this machine's gcc in ${ms} ms`);

  const lib = path.join(paths.root, DEMO_LIB_DIR, LIB);
  const hookLaunch = () => launchHeld(sandbox, ['/opt/fscache-demo/bin/hookdemo'], { PATH: '/usr/bin:/bin', LD_AUDIT: ldAudit }, children);
  const first = await hookLaunch();
  await first.release();
  say('1st launch, no image yet: the original loads and the hook asks the daemon for one');
  say(`  pid ${first.pid} maps ${R(first.mapped)} inode ${first.inode}`);
  say(`  checksum ${first.checksum}; functions by address: ${first.order.join(' ')}`);

  const image = await imageMade(paths, lib, R, say);

  const [a, b] = await Promise.all([hookLaunch(), hookLaunch()]);
  await Promise.all([a.release(), b.release()]);
  say('2nd and 3rd launch, running at the same time:');
  for (const h of [a, b]) say(`  pid ${h.pid} maps ${R(h.mapped)} inode ${h.inode}`);
  say(`  checksum ${a.checksum}, ${b.checksum}; functions by address: ${a.order.join(' ')}`);

  const problems = [
    first.mapped !== lib && '1st launch did not map the original',
    (a.mapped !== image || b.mapped !== image) && 'a later launch did not map the image',
    (a.inode !== b.inode || a.inode === first.inode) && 'the two processes do not share one image file',
    (a.checksum !== first.checksum || b.checksum !== first.checksum) && 'the checksum differs from the original\'s',
    a.order.join() === first.order.join() && 'the functions are in the original order',
    [...a.order].sort().join() !== [...first.order].sort().join() && 'the functions differ',
  ].filter((p): p is string => typeof p === 'string');
  say(problems.length ? `hook: FAILED: ${problems.join('; ')}` :
    'hook: both processes run one shared randomized image (same inode), with the original\'s output and shuffled functions');
  return problems.length === 0;
}

/** Waits (at most 15 s) for the daemon's image of `lib` in the current epoch; says where and when. */
async function imageMade(paths: Paths, lib: string, R: (p: string) => string, say: (s: string) => void): Promise<string> {
  const hp = hookPaths(paths);
  const epoch = fs.readFileSync(hp.epochFile, 'utf8').split(' ')[0];
  const image = path.join(hp.images, epoch, `${keyOf(identityOf(fs.statSync(lib, { bigint: true })))}.so`);
  const t0 = Date.now();
  while (!fs.existsSync(image) && Date.now() - t0 < 15000) await new Promise((r) => setTimeout(r, 50));
  say(fs.existsSync(image) ? `the daemon wrote ${R(image)} (${Date.now() - t0} ms after the 1st launch ended)` : `no image after 15 s (${R(image)})`);
  return image;
}

/** The view's part, printing with `say`; false when the evidence does not hold. */
export async function demoServed(sandbox: Sandbox, paths: Paths, say: (s: string) => void, children: Set<ChildProcess>): Promise<boolean> {
  const R = (p: string) => (p.startsWith(paths.root + '/') ? 'R' + p.slice(paths.root.length) : p);
  const program = path.join(paths.realTree, 'bin', 'fscache-demo-suid');
  const lib = path.join(paths.realTree, DEMO_SERVED_DIR.replace(/^usr\//, ''));
  const ms = build(lib, program, `/${DEMO_SERVED_DIR}`);
  fs.chmodSync(program, 0o4755); // setuid root: ld.so runs it in secure mode, LD_AUDIT ignored
  say(`\nthe view: the same library built into R/usr.real/lib/fscache-demo and a setuid-root program R/usr.real/bin/fscache-demo-suid using it (${ms} ms);`);
  say('  run as nobody (setpriv) with an empty environment: ld.so\'s secure mode, no auditor can load');
  // setpriv and env from R's /usr: through the view, as every program there.
  const served = () => launchHeld(sandbox, ['/usr/bin/setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '/usr/bin/env', '-i', '/usr/bin/fscache-demo-suid'], {}, children);
  const first = await served();
  await first.release();
  say(`1st launch: pid ${first.pid} (${first.uids}) maps ${R(first.mapped)}; functions by address: ${first.order.join(' ')}`);
  await imageMade(paths, path.join(lib, LIB), R, say);
  // The view makes the kernel drop the name when the daemon answers: the next lookup is the image.
  let later = first;
  for (const t0 = Date.now(); later.order.join() === first.order.join() && Date.now() - t0 < 10000;) {
    await new Promise((r) => setTimeout(r, 100));
    later = await served();
    await later.release();
  }
  say(`2nd launch: pid ${later.pid} (${later.uids}) maps ${R(later.mapped)}; checksum ${later.checksum}; functions by address: ${later.order.join(' ')}`);
  const viewLib = path.join(paths.viewMount, 'lib', 'fscache-demo', LIB);
  const problems = [
    later.uids !== 'uid 65534 euid 0' && 'the program did not run setuid-root as nobody',
    later.mapped !== viewLib && 'the library was not mapped under its own name through the view',
    later.checksum !== first.checksum && 'the checksum differs from the original\'s',
    later.order.join() === first.order.join() && 'the functions are in the original order',
  ].filter((p): p is string => typeof p === 'string');
  say(problems.length ? `view: FAILED: ${problems.join('; ')}` :
    'view: a setuid program run by nobody maps the library under its own name, randomized, with the original\'s output');
  return problems.length === 0;
}
