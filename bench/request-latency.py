#!/usr/bin/python3
"""Latency of the requests a warm launch still sends a FUSE view, one at a time.

Usage: python3 bench/request-latency.py FILE DIR GAP_MS
Prints one JSON line: median and 90th percentile in microseconds of
  ioctl     TCGETS on FILE (Python's isatty() on every file it opens),
  getxattr  security.capability of FILE (asked at every exec),
  lookup    stat of a name never seen in DIR (a request every time, never cached),
each measured 300 times with GAP_MS of sleep before each, so that the CPUs may go idle
between requests as they do between the requests of a launch.
"""
import fcntl
import json
import os
import random
import sys
import termios
import time

path, directory, gap = sys.argv[1], sys.argv[2], float(sys.argv[3]) / 1000
fd = os.open(path, os.O_RDONLY)


def ioctl():
    try:
        fcntl.ioctl(fd, termios.TCGETS, bytes(64))
    except OSError:
        pass


def getxattr():
    try:
        os.getxattr(path, 'security.capability')
    except OSError:
        pass


def lookup():
    try:
        os.stat(os.path.join(directory, f'.fscache-bench-{random.random()}'))
    except OSError:
        pass


result = {}
for name, call in (('ioctl', ioctl), ('getxattr', getxattr), ('lookup', lookup)):
    times = []
    for _ in range(300):
        time.sleep(gap)
        t = time.perf_counter()
        call()
        times.append((time.perf_counter() - t) * 1e6)
    times.sort()
    result[name] = {'median': times[len(times) // 2], 'p90': times[len(times) * 9 // 10]}
print(json.dumps(result))
