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
  /** The value of one extended attribute, undefined when the file has none of that name. Never follows a final symlink. */
  lgetxattr(file: string, name: string): Buffer | undefined;
  /** The names of a file's extended attributes. Never follows a final symlink. */
  llistxattr(file: string): string[];
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
