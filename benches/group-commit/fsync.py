#!/usr/bin/env python3
"""What one group commit of the journal costs on a file system: a small record written and made
durable with fdatasync, appended past the end of the file (how the journal wrote before), or
written inside a file grown ahead: with fallocate (how the journal grows now, see
storage/src/journal.rs), or with zeros written out (its way on a file system without
fallocate).

usage: benches/group-commit/fsync.py [DIR] [COMMITS]     (DIR: where the data directory would
                                                          live; default /tmp, 2000 commits)
       taskset -c 0 benches/group-commit/fsync.py /srv/tandem

Prints, for each way, what growing the file by 1 MiB took, and the CPU time (user + system of
this process) and the wall time per commit, twice, alternating. Work the kernel does in its own threads (ext4's journal commits) is
not in the CPU figure; it is in the wall time.
"""
import os
import resource
import sys
import time

DIR = sys.argv[1] if len(sys.argv) > 1 else "/tmp"
COMMITS = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
RECORD = b"x" * 120          # about one small edit's journal record
PREALLOCATE = 1 << 20        # the journal's step (PREALLOCATE_BYTES)


def run(way):
    path = os.path.join(DIR, f"tandem-fsync-bench-{os.getpid()}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        started = time.monotonic()
        if way == "zeros":
            os.pwrite(fd, b"\0" * PREALLOCATE, 0)
            os.fsync(fd)
        elif way == "fallocate":
            os.posix_fallocate(fd, 0, PREALLOCATE)
            os.fsync(fd)
        grow = time.monotonic() - started
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        offset = 0
        for _ in range(COMMITS):
            os.pwrite(fd, RECORD, offset)
            os.fdatasync(fd)
            offset += len(RECORD)
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        os.close(fd)
        os.unlink(path)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(f"{way:9s} (growing {grow * 1e3:5.2f} ms): {cpu / COMMITS * 1e6:6.1f} µs CPU, "
          f"{wall / COMMITS * 1e6:6.1f} µs wall per commit")


if __name__ == "__main__":
    for _ in range(2):
        for way in ("append", "fallocate", "zeros"):
            run(way)
