/**
 * The one config file, R/etc/fscache.conf: `key = value` lines, `#` comments.
 * Every key is declared once below with its default, its allowed values and
 * what it does; `fscache config` prints this table as a commented file.
 * An unknown key or a bad value is an error that names the key and what is allowed.
 */
import * as path from 'path';
import { FsCacheError } from './errors';
import { readTrustedFile } from './trust';

export type Mode = 'view' | 'mirror';
export type WatchMode = 'cached-dirs' | 'off';
export type SessionKind = 'libfuse2' | 'kernel';
export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
export type OnMiss = 'wait' | 'original';

export interface Config {
  mode: Mode;
  hook: 'on' | 'off';
  serveImages: 'on' | 'off';
  daemonIdleSeconds: number;
  supervisorRestSeconds: number;
  fuseSession: SessionKind;
  realTree: string;
  usrLink: string;
  viewDir: string;
  storeDir: string;
  runDir: string;
  quotaBytes: number;
  fillGlobs: string[];
  fillMaxFileBytes: number;
  fillConcurrency: number;
  attrTimeout: number;
  entryTimeout: number;
  negativeTimeout: number;
  watch: WatchMode;
  watchPackageDb: string[];
  watchMaxDirs: number;
  metadataTrustSeconds: number;
  accessFlushMs: number;
  logLevel: LogLevel;
  libraryDirs: string[];
  imagesMaxBytes: number;
  imagesMaxCount: number;
  onMiss: OnMiss;
  missWaitMs: number;
}

interface KeySpec<K extends keyof Config> {
  field: K;
  default: string;
  allowed: string;
  doc: string;
  parse(raw: string): Config[K] | undefined; // undefined: not allowed
}

const SIZE_UNITS: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

function parseSize(raw: string): number | undefined {
  const m = /^(\d+)\s*([KMGT]?)(i?B)?$/i.exec(raw);
  if (!m) return undefined;
  const n = Number(m[1]) * SIZE_UNITS[m[2].toUpperCase()];
  return Number.isSafeInteger(n) ? n : undefined;
}

function intIn(min: number, max: number) {
  return (raw: string): number | undefined => {
    if (!/^\d+$/.test(raw)) return undefined;
    const n = Number(raw);
    return n >= min && n <= max ? n : undefined;
  };
}

function oneOf<T extends string>(...values: T[]) {
  return (raw: string): T | undefined => values.find((v) => v === raw);
}

/** A path below the root prefix: relative, no `..`, so nothing escapes R. */
function relPath(raw: string): string | undefined {
  const clean = raw.replace(/^\/+/, '').replace(/\/+$/, '');
  if (clean === '' || clean.split('/').some((part) => part === '..' || part === '')) return undefined;
  return clean;
}

function list<T>(item: (raw: string) => T | undefined) {
  return (raw: string): T[] | undefined => {
    const items = raw.split(',').map((s) => s.trim()).filter((s) => s !== '');
    const parsed = items.map(item);
    return parsed.every((p) => p !== undefined) ? (parsed as T[]) : undefined;
  };
}

const glob = (raw: string): string | undefined => (/^[\w.*?/+@-]+$/.test(raw) ? raw : undefined);

export const CONFIG_KEYS = {
  mode: {
    field: 'mode', default: 'view', allowed: 'view, mirror', parse: oneOf<Mode>('view', 'mirror'),
    doc: 'view: R/usr points at the FUSE view of the real tree (mounted at view_dir), contents from flash. mirror: a full copy on flash kept by `fscache sync` is bound read-only at view_dir and R/usr points there, no FUSE in the data path.',
  },
  hook: {
    field: 'hook', default: 'on', allowed: 'on, off', parse: oneOf<'on' | 'off'>('on', 'off'),
    doc: 'on: shared randomized libraries. start runs the randomization daemon; in view mode the view serves each library\'s image under its own name (serve_images), and LD_AUDIT is set for new processes (R/etc/environment, the systemd drop-in, Gentoo env.d) only for library_dirs the view does not cover; stop removes it. off: neither.',
  },
  serve_images: {
    field: 'serveImages', default: 'on', allowed: 'on, off', parse: oneOf<'on' | 'off'>('on', 'off'),
    doc: 'With hook = on: on: the view answers every library in library_dirs inside the real tree with its randomized image of the current epoch, under the library\'s own name (in mirror mode the images are written into the mirror at the libraries\' paths), so every program launched through /usr maps it (setuid programs and cleared environments included, no auditor loaded); LD_AUDIT is then set only when a library directory lies outside the real tree. off: images reach processes only through LD_AUDIT (the mirror gets its originals back). Package checksums (debsums, qcheck) must then be run on the real tree.',
  },
  daemon_idle_seconds: {
    field: 'daemonIdleSeconds', default: '60', allowed: 'seconds from 0 to 86400',  parse: intIn(0, 86400),
    doc: 'When only the view asks for images (LD_AUDIT not set, see serve_images): the randomization daemon exits after this long without a request, and the view has the supervisor start it again at its next miss, so that at idle no daemon is resident. 0: it stays. With LD_AUDIT set it always stays (the auditor cannot start it).',
  },
  supervisor_rest_seconds: {
    field: 'supervisorRestSeconds', default: '30', allowed: 'seconds from 0 to 86400', parse: intIn(0, 86400),
    doc: 'View mode: after the view has served this long with nothing for the supervisor to do, the Node supervisor hands its watch to a small static program in its own process (same pid, ~1 MiB instead of ~50 MiB: guard/rest.c), which probes the view every second, puts /usr back on the real tree at once if the view dies or hangs, stops on SIGTERM, and wakes the Node supervisor for anything else (a restart, a pause, a renewal, the daemon). 0: the Node supervisor stays.',
  },
  fuse_session: {
    field: 'fuseSession', default: 'kernel', allowed: 'kernel, libfuse2', parse: oneOf<SessionKind>('libfuse2', 'kernel'),
    doc: 'How the view talks to the kernel. kernel: the FUSE protocol spoken directly over /dev/fuse, negotiating no-open, cached symlinks and invalidation notices, so warm launches are answered by the kernel alone (1.08-1.15x native, bench/RESULTS.md). libfuse2: fuse-native over libfuse 2.9; every open, release and readlink reaches the view (warm launches 1.38-1.85x native), for kernels without those features. Cold launches are alike through both (bench/RESULTS.md).',
  },
  real_tree: {
    field: 'realTree', default: 'usr.real', allowed: 'a path relative to the root, without ..', parse: relPath,
    doc: 'The real /usr tree. The view reads only this path, never R/usr.',
  },
  usr_link: {
    field: 'usrLink', default: 'usr', allowed: 'a path relative to the root, without ..', parse: relPath,
    doc: 'The symlink that fscache switches between the real tree and view_dir.',
  },
  view_dir: {
    field: 'viewDir', default: 'usr.view', allowed: 'a path relative to the root, without ..', parse: relPath,
    doc: 'Where the view (or, in mirror mode, the mirror) is mounted: a directory on the persistent root file system that holds, under the mount, a link to each top-level entry of the real tree, so that with nothing mounted (after a power cut) it is the real tree.',
  },
  store_dir: {
    field: 'storeDir', default: 'fscache', allowed: 'a path relative to the root, without ..', parse: relPath,
    doc: 'Flash storage: store/ (cached contents), images/ (randomized libraries), index.sqlite.',
  },
  run_dir: {
    field: 'runDir', default: 'run/fscache', allowed: 'a path relative to the root, without ..', parse: relPath,
    doc: 'Runtime state: pid and state files, sockets, the log (a tmpfs: nothing here survives a reboot).',
  },
  quota: {
    field: 'quotaBytes', default: '4G', allowed: 'a size in bytes with an optional K, M, G or T suffix', parse: parseSize,
    doc: 'Most bytes the store may hold; least recently used copies are evicted beyond it.',
  },
  fill: {
    field: 'fillGlobs', default: '*.so, *.so.*, bin/*, sbin/*, libexec/**', allowed: 'comma-separated globs (* within a name, ** across directories; a glob without / matches the file name)',
    parse: list(glob),
    doc: 'Which files of the real tree are copied to flash when first opened.',
  },
  fill_max_file: {
    field: 'fillMaxFileBytes', default: '256M', allowed: 'a size in bytes with an optional K, M, G or T suffix', parse: parseSize,
    doc: 'Files larger than this are always served from the real tree.',
  },
  fill_concurrency: {
    field: 'fillConcurrency', default: '2', allowed: 'an integer from 1 to 16', parse: intIn(1, 16),
    doc: 'Background copies to flash running at once.',
  },
  attr_timeout: {
    field: 'attrTimeout', default: '1', allowed: 'whole seconds from 0 to 86400', parse: intIn(0, 86400),
    doc: 'How long the kernel may keep attributes without asking the view; also the longest a changed file may look unchanged.',
  },
  entry_timeout: {
    field: 'entryTimeout', default: '1', allowed: 'whole seconds from 0 to 86400', parse: intIn(0, 86400),
    doc: 'How long the kernel may keep a name lookup; also the longest a replaced or new file may go unnoticed.',
  },
  negative_timeout: {
    field: 'negativeTimeout', default: '1', allowed: 'whole seconds from 0 to 86400', parse: intIn(0, 86400),
    doc: 'How long the kernel may remember that a name does not exist (the loader probes many).',
  },
  watch: {
    field: 'watch', default: 'cached-dirs', allowed: 'cached-dirs, off', parse: oneOf<WatchMode>('cached-dirs', 'off'),
    doc: 'cached-dirs: watch with inotify (each non-recursively) the directories the view reads and those holding cached files, and the package databases; drop changed copies and cached metadata at once. off: no watching; every name and every open reads the real tree.',
  },
  watch_package_db: {
    field: 'watchPackageDb', default: 'var/lib/dpkg/info, var/db/pkg, var/lib/opkg/info', allowed: 'comma-separated paths relative to the root', parse: list(relPath),
    doc: 'Package-manager databases whose change makes the view re-check every cached copy (those that exist are watched).',
  },
  watch_max_dirs: {
    field: 'watchMaxDirs', default: '16384', allowed: 'an integer from 1 to 1048576', parse: intIn(1, 1048576),
    doc: 'Most directories under inotify watch (about 1.4 KiB each); names in other directories are read from the real tree every time.',
  },
  metadata_trust_seconds: {
    field: 'metadataTrustSeconds', default: '60', allowed: 'whole seconds from 0 to 86400 (0: always read metadata from the real tree)', parse: intIn(0, 86400),
    doc: 'How long metadata read from a watched directory is answered from memory without reading the real tree again (any change in the directory forgets it at once).',
  },
  access_flush_ms: {
    field: 'accessFlushMs', default: '2000', allowed: 'milliseconds from 100 to 600000', parse: intIn(100, 600000),
    doc: 'How often access times and hit counts are written to the index in one batch.',
  },
  log_level: {
    field: 'logLevel', default: 'info', allowed: 'error, warn, info, debug', parse: oneOf<LogLevel>('error', 'warn', 'info', 'debug'),
    doc: 'Least severe log line written.',
  },
  library_dirs: {
    field: 'libraryDirs', default: 'lib, lib64, usr/lib, usr/lib64, usr/local/lib', allowed: 'comma-separated paths relative to the root',
    parse: list(relPath),
    doc: 'The randomization daemon makes images only of libraries inside these directories (root-owned, world-readable, not writable by others).',
  },
  images_max_bytes: {
    field: 'imagesMaxBytes', default: '1G', allowed: 'a size in bytes with an optional K, M, G or T suffix', parse: parseSize,
    doc: 'Most bytes of randomized images kept; least recently used images are unlinked beyond it (processes mapping them keep them).',
  },
  images_max_count: {
    field: 'imagesMaxCount', default: '4096', allowed: 'an integer from 1 to 1048576', parse: intIn(1, 1048576),
    doc: 'Most randomized images kept; least recently used images are unlinked beyond it.',
  },
  on_miss: {
    field: 'onMiss', default: 'original', allowed: 'wait, original', parse: oneOf<OnMiss>('wait', 'original'),
    doc: 'When a launch finds no image: wait (ask the daemon and wait up to miss_wait_ms for the image) or original (ask without waiting and load the original; the next launch hits).',
  },
  miss_wait_ms: {
    field: 'missWaitMs', default: '3000', allowed: 'milliseconds from 0 to 60000', parse: intIn(0, 60000),
    doc: 'Longest a launch waits for the daemon per missing library with on_miss = wait; then the original loads.',
  },
} satisfies { [key: string]: KeySpec<keyof Config> };

export type ConfigKey = keyof typeof CONFIG_KEYS;
const KEY_NAMES = Object.keys(CONFIG_KEYS) as ConfigKey[];

function parseValue(key: ConfigKey, raw: string, where: string): unknown {
  const spec: KeySpec<keyof Config> = CONFIG_KEYS[key];
  const value = spec.parse(raw);
  if (value === undefined) {
    throw new FsCacheError('usage', `${where}: bad value '${raw}' for ${key}: allowed: ${spec.allowed}`);
  }
  return value;
}

export function defaultConfig(): Config {
  const config: Partial<Record<keyof Config, unknown>> = {};
  for (const key of KEY_NAMES) config[CONFIG_KEYS[key].field] = parseValue(key, CONFIG_KEYS[key].default, 'default');
  return config as Config;
}

/** Parses config text; `where` names the file in errors. */
export function parseConfig(text: string, where: string): Config {
  const config = defaultConfig() as unknown as Record<string, unknown>;
  const seen = new Set<string>();
  text.split('\n').forEach((line, i) => {
    const content = line.replace(/#.*$/, '').trim();
    if (content === '') return;
    const at = `${where}:${i + 1}`;
    const eq = content.indexOf('=');
    if (eq < 0) throw new FsCacheError('usage', `${at}: expected 'key = value', got '${content}'`);
    const key = content.slice(0, eq).trim();
    const raw = content.slice(eq + 1).trim();
    if (!(key in CONFIG_KEYS)) {
      throw new FsCacheError('usage', `${at}: unknown key '${key}': known keys: ${KEY_NAMES.join(', ')}`);
    }
    if (seen.has(key)) throw new FsCacheError('usage', `${at}: ${key} is set twice`);
    seen.add(key);
    config[CONFIG_KEYS[key as ConfigKey].field] = parseValue(key as ConfigKey, raw, at);
  });
  return config as unknown as Config;
}

/** Reads the config file; a missing file means all defaults. */
/**
 * Reads the config, trusted only if it and the directories from R down to it are root's alone
 * (core/trust.ts): a config others can write chooses the store root serves from. A config given
 * outside R (--config) is checked from its own directory.
 */
export function loadConfig(file: string, root = '/'): Config {
  const inRoot = !path.relative(root, file).startsWith('..');
  let text: string | undefined;
  try {
    text = readTrustedFile(inRoot ? root : path.dirname(file), file);
  } catch (err) {
    if (err instanceof FsCacheError) throw err;
    throw new FsCacheError('usage', `cannot read config ${file}: ${(err as Error).message}`);
  }
  return text === undefined ? defaultConfig() : parseConfig(text, file);
}

/** The documented default config file: every key, its default and allowed values. */
export function renderDefaultConfig(): string {
  const lines = ['# fscache configuration. Every key, with its default; uncomment to change.', ''];
  for (const key of KEY_NAMES) {
    const spec = CONFIG_KEYS[key];
    lines.push(`# ${spec.doc}`, `# allowed: ${spec.allowed}`, `#${key} = ${spec.default}`, '');
  }
  return lines.join('\n');
}
