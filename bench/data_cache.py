"""How long a data set takes to load: first (decoding every image) and second (from the cache).

Uses a fresh cache directory, so the first load really decodes.
Usage: python bench/data_cache.py PATH
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time


def main() -> None:
    """Load the data set twice and print both times."""
    os.environ["DISTREE_CACHE"] = tempfile.mkdtemp(prefix="distree-cache-bench-")
    from distree.data import load_data

    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        splits = load_data(sys.argv[1])
        times.append(time.perf_counter() - t0)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs")
    n_train = len(splits.train) + len(splits.val)
    print(f"{splits.source} ({splits.format}): {n_train} train + {len(splits.test)} test images")
    print(f"first load (decode): {times[0]:.1f} s; second load (cache): {times[1]:.2f} s")


if __name__ == "__main__":
    main()
