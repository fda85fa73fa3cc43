#!/usr/bin/env python3
"""How long fdatasync takes on this disk, with nothing of hookgate running.

For 10 s, writes 40 KB (about one group of hookgate's commit log) and calls fdatasync,
either appending to a new file or overwriting, round and round, a 256 MiB file written
and synced beforehand (so that no sync has to record a new size or new blocks). With --beside, a second process meanwhile writes
4 MiB and calls fdatasync every 200 ms, as sled's background flush does.

    python3 loadtest/disk/fsync.py append|overwrite [--beside] [--dir DIR]
"""
import argparse
import multiprocessing
import os
import time

SECONDS = 10
GROUP = 40_000
PREFILLED = 256 << 20


def beside(path, stop_at):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    chunk = os.urandom(1 << 20)
    offset = 0
    while time.time() < stop_at:
        for _ in range(4):
            os.pwrite(fd, chunk, offset)
            offset = (offset + len(chunk)) % (64 << 20)
        os.fdatasync(fd)
        time.sleep(0.2)
    os.close(fd)
    os.unlink(path)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["append", "overwrite"])
    parser.add_argument("--beside", action="store_true")
    parser.add_argument("--dir", default=".")
    args = parser.parse_args()
    path = os.path.join(args.dir, "fsync-probe.dat")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    if args.mode == "overwrite":
        os.write(fd, b"\0" * PREFILLED)
        os.fsync(fd)
    writer = None
    if args.beside:
        writer = multiprocessing.Process(
            target=beside,
            args=(os.path.join(args.dir, "fsync-beside.dat"), time.time() + SECONDS + 1),
        )
        writer.start()
        time.sleep(0.3)
    group = os.urandom(GROUP)
    took = []
    offset = 0
    stop_at = time.time() + SECONDS
    while time.time() < stop_at:
        os.pwrite(fd, group, offset)
        offset += GROUP
        if args.mode == "overwrite" and offset + GROUP > PREFILLED:
            offset = 0
        began = time.perf_counter()
        os.fdatasync(fd)
        took.append(time.perf_counter() - began)
    os.close(fd)
    os.unlink(path)
    if writer:
        writer.join()
    took.sort()
    n = len(took)
    slow = sum(1 for t in took if t > 0.0128)
    print(
        f"{args.mode}{' beside a writer' if args.beside else ''}: {n} syncs; "
        f"p50 {took[n // 2] * 1e3:.2f} ms, p99 {took[int(n * 0.99)] * 1e3:.2f} ms, "
        f"max {took[-1] * 1e3:.1f} ms; {slow} over 12.8 ms"
    )


if __name__ == "__main__":
    main()
