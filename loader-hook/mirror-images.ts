/**
 * Mirror mode's way of serving images under the libraries' own names (issue 16): the current
 * epoch's image of each randomizable library in `library_dirs` inside the real tree is written into
 * the mirror at the library's path (a new file renamed over the old one: a running process keeps
 * the inode it mapped, a new launch maps the image), and the record (fs/store/mirror-images.ts)
 * says which files of the mirror are images of which real files. With `serve_images = off` or the
 * hook off, the originals are put back. Run by `start`, `sync`, `resume` and `rerandomize` in mirror
 * mode, while nothing is being served from a half-written tree (each file is replaced whole).
 */
import * as fs from 'fs';
import * as path from 'path';
import type { Config } from '../core/config';
import { identityOf } from '../core/identity';
import type { Logger } from '../core/log';
import type { Paths } from '../core/paths';
import { identityText, MirrorImages, readMirrorImages, writeMirrorImages } from '../fs/store/mirror-images';
import { ImageStore } from './images';

/** Replaces `dest` by a copy of `source` with `like`'s mode, owner and times (temporary name, fsync, rename). */
function replaceWith(source: string, dest: string, like: fs.Stats): void {
  const tmp = path.join(path.dirname(dest), `.${path.basename(dest)}.fscache-${process.pid}.tmp`);
  try {
    fs.copyFileSync(source, tmp, fs.constants.COPYFILE_EXCL);
    fs.chownSync(tmp, like.uid, like.gid);
    fs.chmodSync(tmp, like.mode & 0o7777);
    fs.utimesSync(tmp, like.atime, like.mtime);
    const fd = fs.openSync(tmp, fs.constants.O_RDONLY);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fs.renameSync(tmp, dest);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

/**
 * Writes the current epoch's images into the mirror; a library recorded before that is not an image
 * now (no longer eligible, refused, or outside library_dirs) gets its original back. Returns how many
 * files of the mirror are images, and how many were written now.
 */
export function applyMirrorImages(paths: Paths, config: Config, log: Logger): { images: number; written: number } {
  const store = new ImageStore(paths, config, log);
  const before = readMirrorImages(paths);
  const now: MirrorImages = {};
  let written = 0;
  let epoch = '';
  try {
    epoch = store.ensureEpoch();
    for (const lib of store.candidates()) {
      if (!(lib + '/').startsWith(paths.realTree + '/')) continue; // outside the real tree: LD_AUDIT's
      const rel = path.relative(paths.realTree, lib);
      const dest = path.join(paths.mirror, rel);
      let real: fs.BigIntStats;
      try {
        real = fs.lstatSync(lib, { bigint: true });
        if (!fs.lstatSync(dest).isFile()) continue; // not synced yet (or not a file there): the next sync
      } catch {
        continue;
      }
      const id = identityText(real);
      // Already this version's image of this epoch: nothing to write.
      if (before[rel]?.id === id && before[rel].epoch === epoch) {
        now[rel] = before[rel];
        continue;
      }
      const made = store.makeImage(lib, identityOf(real));
      if (made.kind !== 'image') continue;
      replaceWith(made.image, dest, fs.lstatSync(lib));
      now[rel] = { id, epoch };
      written++;
    }
    for (const rel of Object.keys(before)) if (!(rel in now)) putOriginal(paths, rel);
    writeMirrorImages(paths, now);
  } catch (e) {
    // What may be an image stays recorded: rsync then leaves it, and the next run decides again.
    writeMirrorImages(paths, { ...before, ...now });
    throw e;
  } finally {
    store.close();
  }
  if (written) log.info(`mirror: ${written} libraries written as their images of epoch ${epoch}`);
  return { images: Object.keys(now).length, written };
}

/**
 * The real file back in the mirror at `rel`; removed there only when the real tree has none (the
 * next sync agrees). Any other failure (a full flash) leaves the image in place and throws: a
 * served mirror never loses a library.
 */
function putOriginal(paths: Paths, rel: string): void {
  const real = path.join(paths.realTree, rel);
  let st: fs.Stats;
  try {
    st = fs.lstatSync(real);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    fs.rmSync(path.join(paths.mirror, rel), { force: true });
    return;
  }
  replaceWith(real, path.join(paths.mirror, rel), st);
}

/** Puts the originals back in place of every recorded image; returns how many. */
export function restoreMirrorOriginals(paths: Paths, log: Logger): number {
  const record = readMirrorImages(paths);
  const rels = Object.keys(record);
  for (const rel of rels) {
    putOriginal(paths, rel); // a failure leaves the rest recorded (rsync leaves them alone) and says why
    delete record[rel];
    writeMirrorImages(paths, record);
  }
  if (rels.length) log.info(`mirror: ${rels.length} originals put back in place of their images`);
  return rels.length;
}
