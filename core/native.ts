/**
 * fscache's own N-API addon (native/fscache_native.c): the system calls Node's fs lacks.
 * Loaded when this module loads, from the package root: the long-lived processes load
 * every module at start, before the link may point at the view (a load through the view
 * from the view's own process would wait for itself).
 */
import * as path from 'path';
import { FsCacheError } from './errors';
import { PACKAGE_ROOT } from './package-root';

export interface NativeCalls {
  /** openat2(2): a descriptor (O_CLOEXEC always) for `file` relative to `dirfd`, resolved as `resolve` (RESOLVE_* bits) allows. */
  openat2(dirfd: number, file: string, flags: number, resolve: number): number;
  /** readlinkat(2); `file` '' reads the symlink `fd` itself is open on (O_PATH | O_NOFOLLOW). */
  readlinkat(fd: number, file: string): string;
  /** The value of one extended attribute of the object `fd` is open on (also O_PATH, also a symlink); undefined when it has none of that name. */
  fgetxattr(fd: number, name: string): Buffer | undefined;
  /** The names of the extended attributes of the object `fd` is open on (also O_PATH, also a symlink). */
  flistxattr(fd: number): string[];
  /** getsockopt(SO_PEERCRED): the uid of the peer of a connected unix socket. */
  peerUid(fd: number): number;
  /** execve(2) in this process (the supervisor's rest, fs/service/rest.ts); returns only by throwing. */
  execve(file: string, argv: string[], env: string[]): never;
  /** waitpid(2) with WNOHANG of a child libuv did not spawn: undefined while it runs. */
  waitpid(pid: number): { code: number | null; signal: number | null } | undefined;
  /** Sets (1) or clears (0) FD_CLOEXEC on `fd`. */
  setCloexec(fd: number, on: 0 | 1): void;
  /** Flag values from the system headers (Node's fs.constants lacks them). */
  constants: {
    O_PATH: number;
    O_DIRECTORY: number;
    O_NOFOLLOW: number;
    RESOLVE_BENEATH: number;
    RESOLVE_NO_SYMLINKS: number;
    RESOLVE_NO_MAGICLINKS: number;
    AT_FDCWD: number;
  };
}

export const NATIVE_ADDON = path.join(PACKAGE_ROOT, 'native', 'build', 'Release', 'fscache_native.node');

function load(): NativeCalls {
  try {
    return require(NATIVE_ADDON) as NativeCalls;
  } catch (err) {
    throw new FsCacheError('environment', `fscache's native addon cannot be loaded (${(err as Error).message.split('\n')[0]}); run 'npm run build' in ${PACKAGE_ROOT}`);
  }
}

export const native: NativeCalls = load();
