/**
 * The emulated slow disk of DESIGN.md ("How we measure"): an ext4 image of a subset of
 * this machine's /usr, served by nbdkit with its delay and rate filters, exposed as a
 * file by nbdfuse, attached with `losetup -r` and mounted read-only. It stands in for
 * the SD card or spinning disk that holds the real tree.
 */
import { execFileSync, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { isMountPoint } from '../fs/service/preflight';

export const BENCH_DIR = process.env.FSCACHE_BENCH_DIR ?? '/var/tmp/fscache-bench';
/** Parts of /usr that no benchmarked program reads: left out to keep the image small. */
const EXCLUDES = ['share/doc', 'share/man', 'share/locale', 'share/icons', 'share/fonts', 'lib/jvm', 'lib/llvm-*', 'include', 'src', 'local', 'games',
  'lib/x86_64-linux-gnu/libLLVM*', 'lib/x86_64-linux-gnu/*.a', 'lib/gcc', 'libexec/gcc', 'lib/debug', 'share/gdb', 'lib/node_modules', 'share/chromium', 'lib/chromium'];

export interface SlowDisk {
  /** Where the slow copy of /usr is mounted read-only. */
  usr: string;
  detach(): void;
}

function imageOf(source: string): string {
  const image = path.join(BENCH_DIR, 'usr.img');
  if (fs.existsSync(image)) return image;
  const stage = path.join(BENCH_DIR, 'stage');
  fs.mkdirSync(stage, { recursive: true });
  execFileSync('rsync', ['-a', '--delete', ...EXCLUDES.map((e) => `--exclude=/${e}`), `${source}/`, `${stage}/`]);
  const kib = Number(execFileSync('du', ['-sk', stage], { encoding: 'utf8' }).split('\t')[0]);
  const partial = `${image}.partial`;
  execFileSync('truncate', ['-s', `${Math.ceil((kib * 1.25) / 1024) + 256}M`, partial]);
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', stage, partial]);
  fs.renameSync(partial, image);
  fs.rmSync(stage, { recursive: true, force: true });
  return image;
}

/** Attaches the slow disk: `rdelay` per read request and a bandwidth cap, like an SD card. */
export async function attachSlowDisk(options: { rdelay?: string; rate?: string } = {}): Promise<SlowDisk> {
  const image = imageOf('/usr');
  const nbdDir = path.join(BENCH_DIR, 'nbd');
  const usr = path.join(BENCH_DIR, 'slow-usr');
  fs.mkdirSync(nbdDir, { recursive: true });
  fs.mkdirSync(usr, { recursive: true });
  const nbd = spawn('nbdfuse', ['-r', nbdDir, '--command', 'nbdkit', '-s', '--filter=delay', '--filter=rate', 'file', image,
    `rdelay=${options.rdelay ?? '8ms'}`, `rate=${options.rate ?? '20M'}`], { stdio: 'ignore', detached: true });
  nbd.unref();
  const deadline = Date.now() + 15000;
  while (!fs.existsSync(path.join(nbdDir, 'nbd'))) {
    if (Date.now() > deadline) throw new Error('nbdfuse did not come up');
    await new Promise((r) => setTimeout(r, 100));
  }
  const loop = execFileSync('losetup', ['-f', '--show', '-r', path.join(nbdDir, 'nbd')], { encoding: 'utf8' }).trim();
  execFileSync('mount', ['-o', 'ro', loop, usr]);
  return {
    usr,
    detach() {
      if (isMountPoint(usr)) execFileSync('umount', ['-l', usr]);
      execFileSync('losetup', ['-d', loop]);
      if (isMountPoint(nbdDir)) execFileSync('umount', ['-l', nbdDir]);
    },
  };
}
