/**
 * `fscache config --check [--show]`: what an init script runs before start (OpenRC's
 * checkconfig, the LSB script, systemd's ExecStartPre). The config is read by the same
 * loadConfig, with the same trust rule, as the supervisor and the view (cli/context.ts
 * does it before any verb runs: a bad key exits 2, a config others can write exits 3),
 * then what start would refuse without touching anything: a store others can write, a
 * missing real tree, R/usr still a directory. Nothing here changes the system.
 */
import * as fs from 'fs';
import { CONFIG_KEYS, Config, ConfigKey } from '../core/config';
import { FsCacheError } from '../core/errors';
import { readLinkState } from '../fs/switch/link';
import { checkFuseDevice, checkRealTree } from '../fs/service/preflight';
import { checkTrustedPath } from '../core/trust';
import type { Context } from './context';

function render(value: Config[keyof Config]): string {
  return Array.isArray(value) ? value.join(', ') : String(value);
}

/** Every key with its effective value, in the config file's own syntax. */
export function renderEffective(config: Config): string {
  return (Object.keys(CONFIG_KEYS) as ConfigKey[]).map((key) => `${key} = ${render(config[CONFIG_KEYS[key].field])}`).join('\n') + '\n';
}

export function configCheckVerb(ctx: Context, show: boolean): void {
  const { paths, config } = ctx;
  // The places root serves from or writes to: trusted only if root's alone (core/trust.ts).
  for (const dir of [paths.flash, paths.runDir]) checkTrustedPath(paths.root, dir);
  const { state, target } = readLinkState(paths, config.mode);
  if (state === 'directory') throw new FsCacheError('refused', `${paths.usrLink} is a directory, not fscache's link: run 'fscache setup' once`);
  if (state === 'foreign') throw new FsCacheError('refused', `${paths.usrLink} points at ${target}, which fscache did not set`);
  if (state === 'missing') throw new FsCacheError('environment', `${paths.usrLink} is missing; run 'fscache setup --yes'`);
  checkRealTree(paths);
  if (config.mode === 'view') checkFuseDevice();
  const source = fs.existsSync(ctx.configFile) ? ctx.configFile : `${ctx.configFile} (missing: every key at its default)`;
  process.stdout.write(`config ok: ${source}, mode ${config.mode}\n`);
  if (show) process.stdout.write(renderEffective(config));
}
