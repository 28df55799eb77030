/** Picks the FUSE session named by the `fuse_session` config key. */
import type { SessionKind } from './config';
import type { FuseSession, SessionOptions, ViewHandlers } from './session';
import { KernelSession } from './session-kernel';
import { Libfuse2Session } from './session-libfuse2';

export function createSession(kind: SessionKind, handlers: ViewHandlers, options: SessionOptions): FuseSession {
  return kind === 'kernel' ? new KernelSession(handlers, options) : new Libfuse2Session(handlers, options);
}
