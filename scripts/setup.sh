#!/usr/bin/env bash
# Installs everything fscache and its tests need on a fresh Debian 12 machine, as root:
# Debian packages (and a deb-src entry for the source packages the randomizer tests build),
# the npm dependencies, the TypeScript build, the C loader hook and the N-API addon (native/). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# fuse (2.9) and libfuse2, not fuse3: fuse3 Breaks/Replaces fuse and would remove bindfs.
# gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user: the auditor cross-built for aarch64 and
# run under the aarch64 loader (test/arch.test.ts). man-db: the man page's check (test/man.test.ts).
APT_PACKAGES=(libfuse2 fuse rsync bindfs hyperfine attr nbdkit libnbd-bin gdb dpkg-dev
              build-essential python3 perl time libcap2-bin
              gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user man-db)

if ! grep -rqsE '^(Types: *deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat > /etc/apt/sources.list.d/fscache-deb-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ] || [ ! -d /var/lib/apt/lists ] || ! ls /var/lib/apt/lists/*Sources* >/dev/null 2>&1; then
  apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm run --silent build
