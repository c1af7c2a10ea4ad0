"""The fsync latency of a directory's filesystem: what a durable write waits for at least.

    python3 interop/bench/fsync_latency.py [DIR] [-n COUNT]

Appends a 200-byte record to a file in DIR (a temporary directory there, removed after)
and fsyncs it, COUNT times (1000), as a store's commit does; then the same records
written over a file allocated beforehand and made durable with fdatasync (no size or
block allocation to record: the cheaper case). Prints the median, p99 and the rate one
writer waiting for each could reach.
"""

import argparse
import os
import statistics
import tempfile
import time


def measure(directory: str, count: int, preallocated: bool) -> list[float]:
    """Seconds taken by each of `count` durable 200-byte writes to a new file in `directory`."""
    record = b"x" * 200
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        fd = os.open(os.path.join(tmp, "log"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if preallocated:
                os.write(fd, b"\0" * (len(record) * count))
                os.fsync(fd)
            times = []
            for i in range(count):
                t = time.perf_counter()
                os.pwrite(fd, record, i * len(record))
                if preallocated:
                    os.fdatasync(fd)
                else:
                    os.fsync(fd)
                times.append(time.perf_counter() - t)
            return times
        finally:
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", default=".")
    parser.add_argument("-n", "--count", type=int, default=1000)
    args = parser.parse_args()
    for preallocated, what in ((False, "append + fsync"), (True, "overwrite + fdatasync")):
        times = sorted(measure(args.dir, args.count, preallocated))
        median = statistics.median(times)
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(
            f"{what}, 200 bytes, in {os.path.abspath(args.dir)} ({args.count} times): "
            f"median {median * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us, max {times[-1] * 1e6:.0f} us; "
            f"one writer waiting for each: at most {1 / median:.0f}/s"
        )


if __name__ == "__main__":
    main()
