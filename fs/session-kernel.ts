/** The FUSE kernel protocol spoken directly over /dev/fuse (not written yet). */
import { FsCacheError } from './errors';
import type { FuseSession, SessionOptions, ViewHandlers } from './session';

export class KernelSession implements FuseSession {
  readonly name = 'kernel';
  constructor(
    readonly handlers: ViewHandlers,
    readonly options: SessionOptions,
  ) {}
  mount(): Promise<void> {
    return Promise.reject(new FsCacheError('usage', 'fuse_session = kernel is not implemented yet; use libfuse2'));
  }
  detach(): Promise<void> {
    return Promise.resolve();
  }
  closed(): Promise<void> {
    return Promise.resolve();
  }
  requestCounts(): Record<string, number> {
    return {};
  }
  invalidate(): void {}
}
