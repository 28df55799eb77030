SUMMARY = "Flash cache of /usr through a FUSE view, and shared randomized libraries"
DESCRIPTION = "fscache serves /usr from a cache on flash through a FUSE view of the real \
tree, and makes every process map one function-shuffled copy of each library per epoch."
HOMEPAGE = "https://example.invalid/fscache"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://LICENSE;md5=f97f158da1fb51fe0f3a08f9391827d2"

# The tarball `npm pack` makes (dist/ and the sources of the C parts included).
# Adapt the URI to where your layer keeps it.
SRC_URI = "file://fscache-${PV}.tgz"
S = "${WORKDIR}/package"

inherit npm systemd update-rc.d

# Node modules with native parts (better-sqlite3, fuse-native) are built for the target
# by the npm class; fuse-native links libfuse 2 (meta-filesystems' `fuse`, not `fuse3`).
DEPENDS += "fuse"
RDEPENDS:${PN} += "nodejs fuse fuse-utils rsync"

# The auditor and the guard are C (no libc / static): built by the package's own Makefiles
# with the target compiler; the view, index and CLI are architecture-independent.
do_compile:append() {
    oe_runmake -C ${S}/loader-hook CC="${CC}"
    oe_runmake -C ${S}/guard CC="${CC}"
}

SYSTEMD_SERVICE:${PN} = "fscache.service"
INITSCRIPT_NAME = "fscache"
# Early: before anything else starts programs from /usr, after local file systems.
INITSCRIPT_PARAMS = "start 03 S . stop 90 0 6 ."

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/initscripts/systemd/fscache.service ${D}${systemd_system_unitdir}/
    install -m 0644 ${S}/initscripts/systemd/fscache-sync.service ${D}${systemd_system_unitdir}/
    install -m 0644 ${S}/initscripts/systemd/fscache-sync.timer ${D}${systemd_system_unitdir}/
    if [ -f ${S}/initscripts/sysvinit/fscache ]; then
        install -d ${D}${sysconfdir}/init.d
        install -m 0755 ${S}/initscripts/sysvinit/fscache ${D}${sysconfdir}/init.d/fscache
    fi
}

FILES:${PN} += "${systemd_system_unitdir}"
