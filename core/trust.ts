/**
 * Trust only root-owned state. fscache runs as root and serves every program: a config,
 * store or index that someone else can write lets them choose what root serves (a
 * setuid-root trojan through a planted store copy). A file or directory is trusted when it
 * and every directory from R down to it are owned by root and not writable by group or
 * others, and none of them is a symlink. With every directory on the way writable by root
 * only, nobody else can swap a component between this check and the open that follows it.
 */
import * as fs from 'fs';
import * as path from 'path';
import { errnoCode, FsCacheError } from './errors';

/** Why `st` may not be trusted, or undefined. */
function untrusted(st: fs.Stats): string | undefined {
  if (st.isSymbolicLink()) return 'is a symbolic link';
  if (st.uid !== 0) return `is owned by uid ${st.uid}, not root`;
  if (st.mode & 0o022) return `is writable by ${st.mode & 0o002 ? 'others' : 'its group'} (mode ${(st.mode & 0o7777).toString(8)})`;
  return undefined;
}

/**
 * Checks `target` and the directories from `root` down to it (R itself included; what is
 * above R is the administrator's choice of root). Missing components are fine (nothing to
 * trust yet; whoever creates them creates them as root). Throws 'refused' naming the first
 * component that fails.
 */
export function checkTrustedPath(root: string, target: string): void {
  const base = path.resolve(root);
  const full = path.resolve(target);
  const rel = path.relative(base, full);
  if (rel.startsWith('..') || path.isAbsolute(rel)) throw new FsCacheError('refused', `${full} is outside the root ${base}`);
  let current = base;
  for (const part of ['', ...rel.split(path.sep).filter(Boolean)]) {
    current = part ? path.join(current, part) : current;
    let st: fs.Stats;
    try {
      st = fs.lstatSync(current);
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return;
      throw err;
    }
    // R itself may be a symlink (a root prefix given by the administrator); below it nothing may be.
    if (current === base && st.isSymbolicLink()) st = fs.statSync(current);
    const why = untrusted(st);
    if (why) throw new FsCacheError('refused', `${current} ${why}: fscache trusts only root-owned state that others cannot write`);
  }
}

/** Reads `file` after checking it (and the way to it) is root's only, from the descriptor it checked; undefined if missing. */
export function readTrustedFile(root: string, file: string): string | undefined {
  checkTrustedPath(root, path.dirname(file));
  let fd: number;
  try {
    // O_NOFOLLOW: a symlink in the last place is refused by the open itself.
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined;
    if (errnoCode(err) === 'ELOOP') throw new FsCacheError('refused', `${file} is a symbolic link: fscache trusts only root-owned state that others cannot write`);
    throw err;
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new FsCacheError('refused', `${file} is not a regular file`);
    const why = untrusted(st);
    if (why) throw new FsCacheError('refused', `${file} ${why}: fscache trusts only root-owned state that others cannot write`);
    return fs.readFileSync(fd, 'utf8');
  } finally {
    fs.closeSync(fd);
  }
}
