/** Where this package is installed, found from the running module (also when jest runs it from source). */
import * as fs from 'fs';
import * as path from 'path';

function findPackageRoot(): string {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json'))) dir = path.dirname(dir);
  return dir;
}

export const PACKAGE_ROOT = findPackageRoot();

/** The compiled CLI, which the demo, the supervisor and start run as child processes. */
export const CLI_ENTRY = path.join(PACKAGE_ROOT, 'dist', 'cli', 'main.js');
