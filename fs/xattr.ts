/**
 * Extended attributes of the real tree (file capabilities, ACLs, SELinux labels),
 * which Node cannot read itself. They are read with getfattr, one run per directory
 * for all its entries, and kept while the directory and the file's ctime are unchanged
 * (setting an xattr changes ctime), so an exec's security.capability lookup costs a
 * stat, not a process.
 */
import { execFile } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

type Attrs = Map<string, Buffer>;

interface DirCache {
  dirMtimeNs: bigint;
  files: Map<string, { ctimeNs: bigint; attrs: Attrs }>;
}

function runGetfattr(files: string[]): Promise<Map<string, Attrs>> {
  return new Promise((resolve) => {
    execFile(
      'getfattr',
      ['--absolute-names', '--no-dereference', '--dump', '--match=-', '--encoding=hex', '--', ...files],
      { maxBuffer: 64 << 20 },
      // getfattr exits 1 when some file vanished; what it printed is still right.
      (_err, stdout) => {
        const result = new Map<string, Attrs>();
        let current: Attrs | undefined;
        for (const line of String(stdout).split('\n')) {
          if (line.startsWith('# file: ')) {
            current = new Map();
            result.set(line.slice(8), current);
          } else if (current && line.includes('=')) {
            const eq = line.indexOf('=');
            const raw = line.slice(eq + 1);
            current.set(line.slice(0, eq), raw.startsWith('0x') ? Buffer.from(raw.slice(2), 'hex') : Buffer.from(raw.replace(/^"|"$/g, '')));
          }
        }
        resolve(result);
      },
    );
  });
}

export class XattrReader {
  private readonly dirs = new Map<string, DirCache>();
  private readonly loading = new Map<string, Promise<DirCache>>();

  async list(file: string): Promise<Attrs> {
    const st = await fs.promises.lstat(file, { bigint: true });
    const dir = path.dirname(file);
    let cache = this.dirs.get(dir);
    const dirSt = await fs.promises.lstat(dir, { bigint: true });
    if (!cache || cache.dirMtimeNs !== dirSt.mtimeNs || cache.files.get(file)?.ctimeNs !== st.ctimeNs) {
      cache = await this.load(dir, dirSt.mtimeNs);
    }
    const entry = cache.files.get(file);
    if (entry && entry.ctimeNs === st.ctimeNs) return entry.attrs;
    // Changed since the directory was read: read this one file.
    const attrs = (await runGetfattr([file])).get(file) ?? new Map();
    cache.files.set(file, { ctimeNs: st.ctimeNs, attrs });
    return attrs;
  }

  private load(dir: string, dirMtimeNs: bigint): Promise<DirCache> {
    const running = this.loading.get(dir);
    if (running) return running;
    const job = (async () => {
      const names = await fs.promises.readdir(dir);
      const files = names.map((n) => path.join(dir, n));
      const ctimes = new Map<string, bigint>();
      await Promise.all(files.map(async (f) => ctimes.set(f, (await fs.promises.lstat(f, { bigint: true }).catch(() => undefined))?.ctimeNs ?? -1n)));
      const found = files.length ? await runGetfattr(files) : new Map<string, Attrs>();
      const cache: DirCache = { dirMtimeNs, files: new Map() };
      for (const f of files) cache.files.set(f, { ctimeNs: ctimes.get(f)!, attrs: found.get(f) ?? new Map() });
      this.dirs.set(dir, cache);
      return cache;
    })().finally(() => this.loading.delete(dir));
    this.loading.set(dir, job);
    return job;
  }
}
