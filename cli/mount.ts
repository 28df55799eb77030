/** `fscache mount`: the view in the foreground until SIGTERM/SIGINT, then a safe stop. */
import { RunningView } from '../fs/view/view-service';
import type { Context } from './context';

export async function mountVerb(ctx: Context): Promise<void> {
  // The view must outlive whoever started it: a closed log pipe is not a reason to die,
  // and neither is a bug in one request (users would get SIGBUS on their next page fault).
  process.stderr.on('error', () => undefined);
  process.on('uncaughtException', (err) => ctx.log.error(`uncaught: ${err.stack ?? err}`));
  const running = await RunningView.start(ctx.paths, ctx.config, ctx.log);
  await new Promise<void>((resolve) => {
    const onSignal = (sig: string) => {
      ctx.log.info(`${sig} received`);
      running.stop().then(resolve, (err) => {
        ctx.log.error(`stop failed: ${err}`);
        resolve();
      });
    };
    for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(sig, () => onSignal(sig));
  });
}
