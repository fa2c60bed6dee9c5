"""Training speed of candidate CIFAR teachers: MACs per image, images per second of
distree's teacher step and the time of a 45,000-image epoch, on random 32x32 RGB batches.

What a reference run's teacher costs before choosing it (docs/training.md). Each size is
timed by ``bench/training/train_throughput.timed`` (median of --steps steps after two warm-up steps)
with the shipped CIFAR-10 config's optimiser settings.

Usage: python bench/training/teacher_sizes.py [DEPTHxWIDTH ...] [--steps N] [--batch B]
  default sizes: 16x2 16x3 16x4 22x2 28x2 10x4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import timed

from distree.config import WideResNetConfig, load_run_config
from distree.models import WideResNet
from distree.models.macs import count_macs
from distree.provenance import machine
from distree.training.loop import make_optimizer, train_step
from distree.training.objectives import TeacherObjective

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    """Print one line per teacher size."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sizes", nargs="*", default=["16x2", "16x3", "16x4", "22x2", "28x2", "10x4"])
    ap.add_argument("--steps", type=int, default=4, help="timed steps per size (median)")
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    optim = load_run_config(ROOT / "configs" / "cifar10-cpu.yaml").teacher_optim
    print(f"machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for size in args.sizes:
        depth, width = size.split("x")
        teacher = WideResNet(WideResNetConfig(depth=int(depth), width=float(width)), 3, 10)
        macs = count_macs(lambda t=teacher: t(torch.zeros(1, 3, 32, 32)))
        obj = TeacherObjective(teacher)
        opt = make_optimizer(obj, optim)
        obj.train()
        x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))

        def step(o=obj, p=opt, x=x, y=y):
            return train_step(o, p, x, y, None, torch.device("cpu"))

        per_image = timed(step, args.steps) / args.batch
        print(
            f"WRN-{depth}-{width}: {macs / 1e6:.0f} M MACs, {1 / per_image:.0f} images/s, "
            f"45,000-image epoch {45000 * per_image:.0f} s"
        )


if __name__ == "__main__":
    main()
