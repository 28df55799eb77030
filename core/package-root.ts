/**
 * Where this package is installed, found from the running module (also when jest runs it from
 * source, and after `npm install -g`, where PREFIX/bin/fscache is a link: node runs the link's
 * target, so __dirname is inside PREFIX/lib/node_modules/fscache). The auditor, the guard and the
 * native addon are found from here, never through PATH.
 */
import * as fs from 'fs';
import * as path from 'path';

function findPackageRoot(): string {
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    if (path.dirname(dir) === dir) throw new Error(`no package.json above ${__dirname}: fscache is not installed as a package`);
  }
}

export const PACKAGE_ROOT = findPackageRoot();

/** The compiled CLI, which the demo, the supervisor and start run as child processes. */
export const CLI_ENTRY = path.join(PACKAGE_ROOT, 'dist', 'cli', 'main.js');
