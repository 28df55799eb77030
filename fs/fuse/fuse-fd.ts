/** Finding this process's /dev/fuse descriptors, to learn when the kernel closed a connection. */
import * as fs from 'fs';

export function fuseDescriptors(): Set<number> {
  const fds = new Set<number>();
  for (const name of fs.readdirSync('/proc/self/fd')) {
    try {
      if (fs.readlinkSync(`/proc/self/fd/${name}`) === '/dev/fuse') fds.add(Number(name));
    } catch {
      // closed while we looked
    }
  }
  return fds;
}
