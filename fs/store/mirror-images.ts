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
import { identityOf, RealIdentity } from '../../core/identity';
import type { Paths } from '../../core/paths';
import { readTrustedFile } from '../../core/trust';
import { writeAtomic } from '../../core/write-atomic';

/** rel path → the real file's identity (dev, ino, size, mtime ns; decimal, ':'-joined) its image was made from, and the image's epoch. */
export type MirrorImages = Record<string, { id: string; epoch: string }>;

export function mirrorImagesFile(paths: Paths): string {
  return path.join(paths.flash, 'mirror-images.json');
}

export function identityText(id: RealIdentity): string {
  return `${id.dev}:${id.ino}:${id.size}:${id.mtimeNs}`;
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
      return identityText(identityOf(fs.lstatSync(path.join(paths.realTree, rel), { bigint: true }))) === id;
    } catch {
      return false;
    }
  }).map(([rel]) => rel);
}

/** rsync arguments leaving those images alone (anchored, one file each; given on stdin). */
export function rsyncExcludes(rels: string[]): { args: string[]; input?: string } {
  if (!rels.length) return { args: [] };
  // Patterns: a leading '/' anchors at the transfer's root; wildcards in names are escaped.
  return { args: ['--exclude-from=-'], input: rels.map((r) => '/' + r.replace(/[*?[\\]/g, '\\$&')).join('\n') + '\n' };
}
