# Copyright 2026 fscache authors
# Distributed under the terms of the MIT license

EAPI=8

inherit systemd toolchain-funcs

DESCRIPTION="Flash cache of /usr through a FUSE view, and shared randomized libraries"
HOMEPAGE="https://example.invalid/fscache"
# The tarball `npm pack` makes, and the node_modules it needs, vendored (Portage builds
# offline): `npm ci --omit=dev` in an unpacked copy, then tar the node_modules directory.
SRC_URI="
	https://example.invalid/fscache/${P}.tgz
	https://example.invalid/fscache/${P}-node_modules.tar.xz
"
S="${WORKDIR}/package"

LICENSE="MIT"
SLOT="0"
KEYWORDS="~amd64 ~arm64"

# fuse:0 is libfuse 2 (fuse-native's), not fuse:3.
DEPEND="sys-fs/fuse:0"
RDEPEND="${DEPEND}
	>=net-libs/nodejs-20
	net-misc/rsync
"
BDEPEND=">=net-libs/nodejs-20[npm]"

src_unpack() {
	default
	mv "${WORKDIR}/node_modules" "${S}/" || die
}

src_compile() {
	# Native modules for this system's node, then the C parts (the auditor builds on amd64
	# and arm64; the randomizer itself refuses non-x86-64 libraries with a reason).
	npm rebuild --offline || die
	emake -C loader-hook CC="$(tc-getCC)"
	emake -C guard CC="$(tc-getCC)"
}

src_install() {
	insinto /usr/lib/fscache
	doins -r package.json bin dist loader-hook guard native node_modules
	fperms 0755 /usr/lib/fscache/bin/fscache /usr/lib/fscache/guard/fscache-guard
	dosym ../lib/fscache/bin/fscache /usr/bin/fscache
	newinitd initscripts/openrc/fscache fscache
	newconfd initscripts/openrc/conf.d/fscache fscache
	systemd_dounit initscripts/systemd/fscache.service initscripts/systemd/fscache-sync.service initscripts/systemd/fscache-sync.timer
	insinto /etc/portage/env
	doins contrib/gentoo/env/fscache-randomizable.conf
	dodoc README.md
}

pkg_postinst() {
	elog "Run 'fscache setup' once (it moves /usr to /usr.real), then add fscache to the boot runlevel:"
	elog "  rc-update add fscache boot"
	elog "To make libraries randomizable, see /etc/portage/env/fscache-randomizable.conf"
	elog "and 'fscache inspect --installed'."
}
