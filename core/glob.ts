/**
 * The globs of the `fill` key: `*` and `?` within one name, `**` across directories.
 * A glob without `/` matches the file name alone (like .gitignore), one with `/`
 * matches the whole path relative to the real tree.
 */
function globToRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === '*' && glob[i + 1] === '*') {
      re += '.*';
      i++;
      if (glob[i + 1] === '/') i++; // `**/` also matches no directory at all
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

export type PathMatcher = (relPath: string) => boolean;

export function compileGlobs(globs: string[]): PathMatcher {
  const byName = globs.filter((g) => !g.includes('/')).map(globToRegExp);
  const byPath = globs.filter((g) => g.includes('/')).map(globToRegExp);
  return (relPath) => {
    const name = relPath.slice(relPath.lastIndexOf('/') + 1);
    return byName.some((re) => re.test(name)) || byPath.some((re) => re.test(relPath));
  };
}
