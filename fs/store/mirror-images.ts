/**
 * Which files of the mirror are randomized images in place of the real tree's libraries (mirror
 * mode with `serve_images = on`; loader-hook/mirror-images.ts writes them). The record,
 * R/fscache/mirror-images.json (root's, 0600: it names the identity of every library), maps each
 * such path (relative to the tree) to the identity of the real file its image was made from.
 *
 * Never stale: an image stands in for its library only while that library is unchanged. So rsync
 * (sync, and the comparison before the mirror is served) leaves alone exactly the images whose real
 * file still has the recorded identity; a library changed since is copied again as an original,
 * and gets a new image when images are applied next.
 */
import * as fs from 'fs';
import * as path from 'path';
import type { Paths } from '../../core/paths';
import { readTrustedFile } from '../../core/trust';
import { writeAtomic } from '../../core/write-atomic';

/** rel path → the real file's identity (dev, ino, size, mtime ns; decimal, ':'-joined) its image was made from, and the image's epoch. */
export type MirrorImages = Record<string, { id: string; epoch: string }>;

export function mirrorImagesFile(paths: Paths): string {
  return path.join(paths.flash, 'mirror-images.json');
}

/**
 * The real file's identity as recorded: dev, ino, size, mtime and ctime in ns. ctime too: a chmod
 * or chown changes nothing else, and must make the image go (it may no longer be eligible).
 */
export function identityText(st: fs.BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

/** The record; empty when there is none, or when it is not root's alone (then nothing is left alone by rsync). */
export function readMirrorImages(paths: Paths): MirrorImages {
  try {
    const text = readTrustedFile(paths.root, mirrorImagesFile(paths));
    return text ? (JSON.parse(text) as MirrorImages) : {};
  } catch {
    return {};
  }
}

export function writeMirrorImages(paths: Paths, images: MirrorImages): void {
  if (Object.keys(images).length === 0) fs.rmSync(mirrorImagesFile(paths), { force: true });
  else writeAtomic(mirrorImagesFile(paths), JSON.stringify(images, null, 1) + '\n', 0o600);
}

/** The images of the mirror whose library is unchanged in the real tree: what rsync must not touch. */
export function currentMirrorImages(paths: Paths): string[] {
  return Object.entries(readMirrorImages(paths)).filter(([rel, { id }]) => {
    try {
      return identityText(fs.lstatSync(path.join(paths.realTree, rel), { bigint: true })) === id;
    } catch {
      return false;
    }
  }).map(([rel]) => rel);
}

/** rsync arguments leaving those images alone (anchored, one file each; NUL-separated on stdin). */
export function rsyncExcludes(rels: string[]): { args: string[]; input?: string } {
  if (!rels.length) return { args: [] };
  // A leading '/' anchors at the transfer's root; rsync reads '\\' as an escape only in a pattern
  // with a wildcard, so only such a name gets its wildcards and backslashes escaped.
  const pattern = (r: string) => '/' + (/[*?[]/.test(r) ? r.replace(/[*?[\\]/g, '\\$&') : r);
  return { args: ['--from0', '--exclude-from=-'], input: rels.map(pattern).join('\0') + '\0' };
}
