/**
 * `fscache inspect --installed`: every shared library under the real tree, and the package that
 * owns each, so that an administrator sees which packages to rebuild with the randomization flags
 * (README, "Making libraries randomizable").
 *
 * Read-only: the walk reads the real tree (never the view: this may run while R/usr points at it,
 * and the real tree is what a rebuild changes), a library is recognised by its ELF header alone,
 * and package owners come from the package manager's own query program, found by absolute path in
 * the root (never via PATH) and run against the root's database.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { findProgram } from '../fs/service/programs';
import { withRegularFile } from '../core/regular-file';
import type { Paths } from '../core/paths';

/** What a shared object's name looks like (libfoo.so, libfoo.so.1.2): the loader's, not a file's type. */
const SHARED_NAME = /\.so(\.\d+)*$/;
const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);
const ET_DYN = 3;

/** Whether `file` is a regular file that starts like an ELF shared object (ET_DYN), read without following links. */
function isSharedObject(file: string): boolean {
  // withRegularFile: a FIFO planted under the tree must not stall the walk.
  return withRegularFile(file, (fd) => {
    const head = Buffer.alloc(18);
    return fs.readSync(fd, head, 0, head.length, 0) === head.length && head.subarray(0, 4).equals(ELF_MAGIC) && head.readUInt16LE(16) === ET_DYN;
  }) ?? false;
}

/**
 * The shared libraries under the real tree, as paths under R/usr (what packages list), sorted.
 * Symbolic links (libfoo.so -> libfoo.so.1) are skipped: the file they name is listed once.
 */
export function installedLibraries(paths: Paths): { usrPath: string; file: string }[] {
  const found: { usrPath: string; file: string }[] = [];
  // Before `fscache setup` there is no real tree yet: R/usr is still the directory itself.
  const top = fs.existsSync(paths.realTree) ? paths.realTree : path.join(paths.root, 'usr');
  const walk = (dir: string): void => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return; // unreadable directory: nothing of it is listed
    }
    for (const e of entries) {
      const file = path.join(dir, e.name);
      if (e.isDirectory()) walk(file);
      else if (e.isFile() && SHARED_NAME.test(e.name) && isSharedObject(file)) {
        found.push({ usrPath: '/' + path.join(path.relative(paths.root, paths.usrLink), path.relative(top, file)), file });
      }
    }
  };
  walk(top);
  return found.sort((a, b) => (a.usrPath < b.usrPath ? -1 : 1));
}

/**
 * The owning package of each path (as the package database names it, /usr/...), by the root's
 * package manager: dpkg (-S), Portage (qfile) or opkg (search). Paths nobody owns are absent;
 * with no package manager in the root the map is empty.
 */
export function packageOwners(paths: Paths, usrPaths: string[]): Map<string, string> {
  const owners = new Map<string, string>();
  if (usrPaths.length === 0) return owners;
  const query = (program: string, args: string[], names: string[]) => {
    const r = spawnSync(program, [...args, ...names], { encoding: 'utf8', timeout: 120000, maxBuffer: 64 << 20, env: { PATH: '/usr/bin:/bin', LC_ALL: 'C' } });
    // "owner: /path" (dpkg-query -S, qfile); dpkg names several owners "a, b: /path". A path
    // nobody owns is reported on stderr only.
    const found = new Map<string, string>();
    for (const line of (r.stdout ?? '').split('\n')) {
      const at = line.indexOf(': /');
      if (at > 0 && !line.startsWith('diversion by')) found.set(line.slice(at + 2), line.slice(0, at));
    }
    return found;
  };
  const dpkgQuery = fs.existsSync(path.join(paths.root, 'var/lib/dpkg/status')) ? findProgram(paths, 'dpkg-query') : undefined;
  const qfile = fs.existsSync(path.join(paths.root, 'var/db/pkg')) ? findProgram(paths, 'qfile') : undefined;
  const opkgInfo = path.join(paths.root, 'var/lib/opkg/info');
  let lookup: ((names: string[]) => Map<string, string>) | undefined;
  if (dpkgQuery) lookup = (names) => query(dpkgQuery, [`--admindir=${path.join(paths.root, 'var/lib/dpkg')}`, '-S'], names);
  else if (qfile) lookup = (names) => query(qfile, ['--root', paths.root], names);
  else if (fs.existsSync(opkgInfo)) {
    // opkg keeps one PKG.list per package (path, tab, mode): reading them is what `opkg search` does.
    lookup = (names) => {
      const wanted = new Set(names);
      const found = new Map<string, string>();
      for (const list of fs.readdirSync(opkgInfo).filter((n) => n.endsWith('.list'))) {
        for (const line of fs.readFileSync(path.join(opkgInfo, list), 'utf8').split('\n')) {
          const p = line.split('\t')[0];
          if (wanted.has(p)) found.set(p, list.slice(0, -'.list'.length));
        }
      }
      return found;
    };
  }
  if (!lookup) return owners;
  for (const [p, owner] of lookup(usrPaths)) owners.set(p, owner);
  // A merged-/usr root whose packages still list /lib/...: ask again for what nobody owned.
  const aliases = new Map(usrPaths.filter((p) => !owners.has(p)).map((p) => [p.replace(/^\/usr\//, '/'), p]));
  const unowned = [...aliases.keys()].filter((a) => !a.startsWith('/usr/'));
  for (const [alias, owner] of unowned.length ? lookup(unowned) : []) {
    const p = aliases.get(alias);
    if (p) owners.set(p, owner);
  }
  return owners;
}
