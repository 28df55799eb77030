/** Resolves the global options (--root, --config) into paths, config and a logger. */
import * as path from 'path';
import { Config, loadConfig } from '../core/config';
import { Logger, makeLogger } from '../core/log';
import { configFileFor, derivePaths, Paths } from '../core/paths';

export interface GlobalOptions {
  root?: string;
  config?: string;
}

export interface Context {
  paths: Paths;
  config: Config;
  configFile: string;
  log: Logger;
}

export function contextFrom(opts: GlobalOptions): Context {
  const root = path.resolve(opts.root ?? process.env.FSCACHE_ROOT ?? '/');
  const configFile = opts.config ? path.resolve(opts.config) : configFileFor(root);
  const config = loadConfig(configFile, root);
  return { paths: derivePaths(root, config), config, configFile, log: makeLogger(config.logLevel) };
}
