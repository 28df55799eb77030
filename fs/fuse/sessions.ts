/** Picks the FUSE session named by the `fuse_session` config key. */
import type { SessionKind } from '../../core/config';
import type { FuseSession, SessionOptions, ViewHandlers } from './session';
import { KernelSession } from './session-kernel';

export function createSession(kind: SessionKind, handlers: ViewHandlers, options: SessionOptions): FuseSession {
  if (kind === 'kernel') return new KernelSession(handlers, options);
  // Loaded only when chosen: fuse-native ships a prebuilt addon for linux-x64 only, and the kernel
  // session (the default) must run where it has none. Still before the mount, never after a switch.
  const { Libfuse2Session } = require('./session-libfuse2') as typeof import('./session-libfuse2');
  return new Libfuse2Session(handlers, options);
}
