/**
 * Images on flash that rots (issue 14, finding 7, the images' half): an image truncated or
 * changed after it was made is never mapped. The hook uses an image only where its size equals
 * the size the daemon sealed it with (a truncated image made the next launch die of SIGBUS); a
 * daemon taking over an epoch re-hashes every image against the sha256 recorded in the index
 * and removes what differs. Either way the launch succeeds and the image is made again.
 * Rot is not something a user does: these run as root on the store, and the launches as nobody.
 * Run `npm run build` first (the daemon runs from dist/, the auditor is compiled per sandbox).
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { announceSkip } from '../elf/libs';
import { currentEpoch, daemonLog, imageFor, Libs, libs, makeSandbox, removeSandbox, Sandbox, startDaemon, stopDaemon } from '../hook/sandbox';
import { sha } from '../helpers/hash';

const L = libs();
const run = 'skip' in L ? describe.skip : describe;
if ('skip' in L) announceSkip('image rot tests', L.skip);


/** The consumer (SQLite + zlib, checks its own results) launched by nobody with the hook; bounded. */
function launchAsNobody(sb: Sandbox): { status: number | null; signal: string | null; out: string; maps: Set<string> } {
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', sb.consumer],
    { env: { PATH: '/usr/bin:/bin', LD_AUDIT: sb.auditor }, encoding: 'utf8', timeout: 120_000 });
  const maps = new Set(r.stdout.split('\n').map((l) => /^map (.+?)(?: \(deleted\))? \d+$/.exec(l)?.[1]).filter((p): p is string => !!p));
  return { status: r.status, signal: r.signal, out: r.stdout + r.stderr, maps };
}

run('images on rotting flash', () => {
  const l = L as Libs;
  let sb: Sandbox;
  let zlib: string;

  beforeEach(() => {
    sb = makeSandbox(l);
    zlib = path.join(sb.lib, 'libz.so.1');
  });

  afterEach(async () => {
    await stopDaemon(sb, 'SIGKILL');
    removeSandbox(sb);
  });

  test('an image truncated on flash (its mtime kept): the launch maps no part of it, and the image is made again', async () => {
    await startDaemon(sb);
    const first = launchAsNobody(sb);
    const img = imageFor(sb, zlib, currentEpoch(sb));
    expect(first.status).toBe(0);
    expect(first.maps.has(img)).toBe(true);
    const made = fs.statSync(img);
    expect(made.mtimeMs / 1000).toBe(made.size); // the seal

    // What a damaged file system leaves: the tail is gone, the timestamps are as they were.
    fs.truncateSync(img, Math.floor(made.size / 2));
    fs.utimesSync(img, made.atime, made.mtime);

    const after = launchAsNobody(sb);
    expect([after.status, after.signal]).toEqual([0, null]); // it used to die of SIGBUS
    expect(after.out).toMatch(/^ok 200 /);
    expect(after.maps.has(img)).toBe(true); // the daemon made it again while the hook waited
    expect(fs.statSync(img).size).toBe(made.size);
    expect(daemonLog(sb)).toMatch(/image .*\.so removed: size \d+, made with \d+/);
  }, 180_000);

  test('a byte flipped in an image (size and mtime kept): the next daemon removes it before answering; launches map a good one', async () => {
    await startDaemon(sb);
    expect(launchAsNobody(sb).status).toBe(0);
    const img = imageFor(sb, zlib, currentEpoch(sb));
    const good = fs.readFileSync(img);
    const st = fs.statSync(img);
    await stopDaemon(sb);

    const fd = fs.openSync(img, 'r+');
    fs.writeSync(fd, Buffer.from([good[0x2000] ^ 0x40]), 0, 1, 0x2000);
    fs.closeSync(fd);
    fs.utimesSync(img, st.atime, st.mtime);

    await startDaemon(sb);
    expect(daemonLog(sb)).toMatch(/image .*\.so removed: contents differ from those made/);
    const check = /checked 2 image\(s\) of epoch \d+ in (\d+) ms, 1 removed/.exec(daemonLog(sb));
    expect(check).not.toBeNull();
    const bytes = fs.readdirSync(path.dirname(img)).reduce((n, f) => n + fs.statSync(path.join(path.dirname(img), f)).size, 0);
    console.log(`daemon start: ${check![1]} ms to re-hash the epoch's images (about ${(bytes / 1048576).toFixed(1)} MiB)`);
    const after = launchAsNobody(sb);
    expect(after.status).toBe(0);
    expect(after.maps.has(img)).toBe(true);
    expect(sha(fs.readFileSync(img))).toBe(sha(good)); // same seed, same bytes: made again, not patched
  }, 180_000);
});
