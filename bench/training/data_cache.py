"""How long a data set takes to load: first (decoding every image) and second (from the cache).

Uses a fresh cache directory, so the first load really decodes.
Usage: python bench/training/data_cache.py PATH
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from distree.provenance import machine


def main() -> None:
    """Load the data set twice and print both times."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="the data set's path, as `distree train --data` takes it")
    args = ap.parse_args()
    os.environ["DISTREE_CACHE"] = tempfile.mkdtemp(prefix="distree-cache-bench-")
    from distree.data import load_data

    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        splits = load_data(args.data)
        times.append(time.perf_counter() - t0)
    print(f"machine: {machine()}")
    n_train = len(splits.train) + len(splits.val)
    print(f"{splits.source} ({splits.format}): {n_train} train + {len(splits.test)} test images")
    print(f"first load (decode): {times[0]:.1f} s; second load (cache): {times[1]:.2f} s")


if __name__ == "__main__":
    main()
