"""A user's own small data set with default settings: does `distree train` learn it?

Builds an image folder of N training and M test images, 32x32 grayscale, 10 classes, from
Fashion-MNIST (each 28x28 image zero-padded to 32x32; a fixed, class-balanced sample),
then runs `distree train --data FOLDER --out RUN` with no other flag and `distree eval`,
and prints the sizing distree chose, the accuracies and the wall time.

Usage: python bench/training/small_data.py FASHION_MNIST_DIR [--train 1300] [--test 1000] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from distree.data import load_data
from distree.provenance import machine


def write_folder(source: str, root: Path, n_train: int, n_test: int) -> None:
    """ROOT/{train,test}/<class>/*.png, class-balanced, seeded."""
    splits = load_data(source, val_fraction=0.1)
    rng = np.random.default_rng(0)
    for split, images, labels, n in (
        ("train", splits.train.images, splits.train.labels, n_train),
        ("test", splits.test.images, splits.test.labels, n_test),
    ):
        per_class = n // len(splits.train.classes)
        for c, name in enumerate(splits.train.classes):
            idx = rng.choice(np.flatnonzero(labels.numpy() == c), per_class, replace=False)
            d = root / split / f"{c}-{name.replace('/', '-')}"
            d.mkdir(parents=True, exist_ok=True)
            for i in idx:
                im = np.pad(images[i, 0].numpy(), 2)
                Image.fromarray(im, mode="L").save(d / f"{i:05d}.png")


def main() -> None:
    """Build the folder, train with defaults, evaluate, print."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fashion_mnist")
    ap.add_argument("--train", type=int, default=1300)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--work", help="where the folder and run go (default: a new temporary directory)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="distree-small-"))
    data, run = work / "data", work / "run"
    write_folder(args.fashion_mnist, data, args.train, args.test)
    env = {**os.environ, "DISTREE_CACHE": str(work / "cache")}
    cli = [str(Path(sys.executable).parent / "distree")]
    t0 = time.perf_counter()
    train = subprocess.run(
        [*cli, "train", "--data", str(data), "--out", str(run)], check=False, env=env, text=True, stderr=subprocess.PIPE
    )
    t_train = time.perf_counter() - t0
    if train.returncode:
        sys.exit(f"distree train failed:\n{train.stderr}")
    out = work / "eval.json"
    subprocess.run(
        [*cli, "eval", str(run), "--data", str(data), "--json", str(out)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    r = json.loads(out.read_text())
    sized = [line for line in train.stderr.splitlines() if line.startswith(("sized", "warning"))]
    print(
        f"machine: {machine()}; data: {args.train} train (10% of it validation) / "
        f"{args.test} test images, 32x32 grayscale, 10 classes (Fashion-MNIST, padded)"
    )
    print("\n".join(sized) or "(no sizing: the defaults were kept)")
    print(
        f"training: {t_train / 60:.1f} min; teacher {r['teacher']['accuracy']:.2%}, student full execution "
        f"{r['full']['accuracy']:.2%}, exits {[round(e['accuracy'], 4) for e in r['exits']]}"
    )


if __name__ == "__main__":
    main()
