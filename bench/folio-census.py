#!/usr/bin/python3
"""How much of a file's page cache sits in large folios (more than one page per folio).

Usage, as root: python3 bench/folio-census.py FILE...

Maps each file, touches every page (so that all of it is in the page cache), then looks each
page's frame up in /proc/self/pagemap and its flags in /proc/kpageflags (compound head or
tail = part of a large folio). ext4 on kernel 6.18 caches files in large folios; a FUSE
mount on the same kernel does not, which is why reads and page faults through any FUSE
view cost more per byte than natively (bench/RESULTS.md).
"""
import mmap
import os
import struct
import sys

PAGE = os.sysconf('SC_PAGE_SIZE')
KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL = 1 << 15, 1 << 16


def census(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, 0
        m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        pages = (size + PAGE - 1) // PAGE
        for i in range(pages):
            m[i * PAGE]  # fault it in
        start = mapping_start(os.fstat(fd))
        large = 0
        with open('/proc/self/pagemap', 'rb') as pagemap, open('/proc/kpageflags', 'rb') as kpageflags:
            for i in range(pages):
                pagemap.seek((start // PAGE + i) * 8)
                entry = struct.unpack('<Q', pagemap.read(8))[0]
                if not entry >> 63:  # not present
                    continue
                kpageflags.seek((entry & ((1 << 55) - 1)) * 8)
                flags = struct.unpack('<Q', kpageflags.read(8))[0]
                large += bool(flags & (KPF_COMPOUND_HEAD | KPF_COMPOUND_TAIL))
        m.close()
        return pages, large
    finally:
        os.close(fd)


def mapping_start(st):
    """The address of our mapping of the file with this inode (the last one mapped)."""
    found = None
    with open('/proc/self/maps') as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 5 and int(fields[4]) == st.st_ino and fields[3] != '00:00':
                found = int(fields[0].split('-')[0], 16)
    if found is None:
        sys.exit('folio-census: mapping not found in /proc/self/maps')
    return found


for p in sys.argv[1:]:
    pages, large = census(p)
    print(f'{p}: {pages} pages, {large} in large folios ({100 * large / max(pages, 1):.0f}%)')
