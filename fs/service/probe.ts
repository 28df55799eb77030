/**
 * The supervisor's probe of a view: an lstat of a fresh name under the mount point,
 * expecting ENOENT. The kernel cannot answer it from its caches (a negative entry is
 * cached for that one name only), so the answer comes from the view's process.
 *
 * The lstat runs on libuv's threadpool, where it may block on a hung view without
 * blocking the supervisor's own thread; it is raced against a deadline. At most one is
 * outstanding per view: a blocked one holds its pool thread until the connection is
 * aborted, which ends it with an error.
 */
import * as fs from 'fs';
import * as path from 'path';
import { errnoCode } from '../../core/errors';

export type ProbeFailure = 'hang' | 'dead-connection' | 'error';

export type ProbeResult = { ok: true; ms: number } | { ok: false; kind: ProbeFailure; message: string };

export class Prober {
  private count = 0;
  private readonly began = Date.now();
  private outstanding = false;

  constructor(
    private readonly mountpoint: string,
    private readonly deadlineMs: number,
  ) {}

  /** True while a probe has not returned (also after its deadline passed). */
  get busy(): boolean {
    return this.outstanding;
  }

  probe(): Promise<ProbeResult> {
    if (this.outstanding) return Promise.resolve({ ok: false, kind: 'hang', message: 'the previous probe has not returned' });
    this.outstanding = true;
    // Fresh across probers of one pid too (a supervisor woken from its rest): a name the kernel remembers as missing is answered without the view.
    const name = path.join(this.mountpoint, `.fscache-probe-${process.pid}-${this.began}-${++this.count}`);
    const t0 = Date.now();
    const answer = fs.promises.lstat(name).then(
      () => 'EEXIST',
      (err) => errnoCode(err) ?? String(err),
    ).finally(() => (this.outstanding = false));
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<'deadline'>((resolve) => (timer = setTimeout(() => resolve('deadline'), this.deadlineMs)));
    return Promise.race([answer, deadline]).then((code): ProbeResult => {
      clearTimeout(timer);
      const ms = Date.now() - t0;
      if (code === 'ENOENT') return { ok: true, ms };
      if (code === 'deadline') return { ok: false, kind: 'hang', message: `no answer to a probe within ${this.deadlineMs} ms` };
      if (code === 'ENOTCONN' || code === 'ECONNABORTED') return { ok: false, kind: 'dead-connection', message: `the mount answers ${code}` };
      return { ok: false, kind: 'error', message: `a probe of ${name} gave ${code}, not ENOENT` };
    });
  }
}
