"""Training throughput per phase and shipped config: images/s and achieved GFLOP/s.

Runs the training step distree uses (``training.loop.train_step``) on random batches of
the data set's shape, for every phase of each config:

  teacher             the teacher's step (forward + backward + SGD)
  student, online     the student's step with the teacher's forward pass in it (crops, no teacher_views)
  student, views      the student's step on precomputed teacher outputs (teacher_views, or no crops)
  teacher views       computing the teacher's outputs on the view table (forward only), per view

GFLOP/s counts 2 x 3 x MACs per trained image (forward + two backward products) plus
2 x teacher MACs for an online teacher's forward pass, and 2 x MACs for a forward pass
alone. Peak = threads x reported clock x FLOP/cycle, assumed from the kernels torch
picked: 64 with AVX-512 (two 16-wide fp32 FMA units), 32 with AVX2 (two 8-wide). A clock
that boosts above the reported one, or a core with fewer FMA units, moves the peak: the
share is for scale, not a measurement. The peak is fp32's: bf16 dot-product instructions
(AVX512-BF16) do twice the multiply-adds per lane, so bf16 phases can read above 100%.

Every phase runs at each ``--precision`` (``OptimConfig.precision``: fp32, or bf16 mixed
precision, which pays on CPUs with AVX512-BF16), the teacher's views too, as ``distree
train`` computes them at the student's precision.

Usage: python bench/training/train_throughput.py [CONFIG[:CxS] ...] [--steps N] [--batch B]
                                                 [--precision fp32 bf16] [--layout channels_last]
  CxS is channels x image size (default 1x28 for fashion-mnist configs, 3x32 otherwise).
  With no config: the three shipped configs.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import torch

from distree.config import load_run_config
from distree.data.augment import Normalization, apply_views, random_views
from distree.models import DistrEEStudent, build_teacher
from distree.models.macs import count_macs
from distree.provenance import machine
from distree.training.loop import make_optimizer, train_step
from distree.training.objectives import StudentObjective, TeacherObjective, TeacherTargets, ViewTable

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["configs/cifar10-cpu.yaml", "configs/fashion-mnist.yaml", "configs/cifar10-gpu.yaml"]
FLOP_PER_CYCLE = {"AVX512": 64, "AVX2": 32}
LAYOUTS = {"default": torch.contiguous_format, "channels_last": torch.channels_last}


def cpu_clock_ghz() -> float | None:
    """The clock the kernel reports for the first CPU (nominal on most VMs)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1000
    except OSError:
        pass
    return None


def timed(fn, steps: int) -> float:
    """Median seconds of ``fn()`` over ``steps`` calls after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_config(
    path: str, shape: tuple[int, int], steps: int, batch: int | None, fmt: torch.memory_format, precision: str
):
    """Rows (phase, images/s, GFLOP/s) for one config, memory format and precision."""
    cfg = load_run_config(path)
    channels, size = shape
    classes = 10
    device = torch.device("cpu")
    torch.manual_seed(0)
    teacher = build_teacher(cfg.teacher, channels, classes)
    student = DistrEEStudent(cfg.student, channels, classes, size)
    t_macs = count_macs(lambda: teacher(torch.zeros(1, channels, size, size)))
    s_macs = student.macs.full()
    n = 4 * (batch or cfg.student_optim.batch_size)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8)
    labels = torch.randint(0, classes, (n,))
    norm = Normalization.fit(images)
    pad, flip = cfg.data.crop_padding, cfg.data.flip

    def stepper(obj, optim_cfg, table: ViewTable | None):
        obj = obj.to(memory_format=fmt)
        opt = make_optimizer(obj, optim_cfg)
        bs = batch or optim_cfg.batch_size
        obj.train()

        def step():
            idx = torch.randint(0, n, (bs,))
            if table is not None:
                views, rows = table.draw(idx)
            else:
                views, rows = random_views(idx.shape, pad, flip), None
            x = apply_views(norm(images[idx]), pad, views).contiguous(memory_format=fmt)
            train_step(obj, opt, x, labels[idx], rows, device, precision=precision)

        return step, bs

    rows = []
    step, bs = stepper(TeacherObjective(teacher), cfg.teacher_optim, None)
    per = timed(step, steps) / bs
    rows.append(("teacher", 1 / per, 6 * t_macs / per))
    teacher.eval()
    step, bs = stepper(StudentObjective(student, teacher, cfg.distill), cfg.student_optim, None)
    per = timed(step, steps) / bs
    rows.append(("student, online teacher", 1 / per, (6 * s_macs + 2 * t_macs) / per))
    table = ViewTable(n, pad, flip, max(1, cfg.distill.teacher_views or 4), seed=0)
    t0 = time.perf_counter()
    targets = TeacherTargets(
        teacher.to(memory_format=fmt), images, norm, table, cfg.eval_batch_size, device, precision=precision
    )
    per = (time.perf_counter() - t0) / (n * table.per_image)
    rows.append(("teacher views (forward)", 1 / per, 2 * t_macs / per))
    step, bs = stepper(StudentObjective(student, teacher, cfg.distill, targets), cfg.student_optim, table)
    per = timed(step, steps) / bs
    rows.append(("student, precomputed views", 1 / per, 6 * s_macs / per))
    return rows, t_macs, s_macs


def main() -> None:
    """Print one table per config."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="*", help="config files, each optionally :CxS")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per measurement (median)")
    ap.add_argument("--batch", type=int, help="override the configs' batch size")
    ap.add_argument(
        "--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"], help="training steps' arithmetic"
    )
    ap.add_argument(
        "--layout", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS), help="memory layouts to measure"
    )
    args = ap.parse_args()
    specs = args.configs or [str(ROOT / c) for c in SHIPPED]
    ghz = cpu_clock_ghz()
    cores = torch.get_num_threads()
    isa = torch.backends.cpu.get_cpu_capability()
    per_cycle = FLOP_PER_CYCLE.get(isa, 16)
    peak = cores * ghz * per_cycle if ghz else None
    print(
        f"machine: {machine()}; torch {torch.__version__} with {cores} threads, "
        f"{isa} kernels, clock {ghz or '?'} GHz; "
        f"peak {f'{peak:.0f}' if peak else '?'} GFLOP/s ({cores} x {ghz} GHz x {per_cycle} FLOP/cycle, assumed)"
    )
    t_start = time.perf_counter()
    for spec in specs:
        path, _, shape_s = spec.partition(":")
        if shape_s:
            c, s = shape_s.lower().split("x")
            shape = (int(c), int(s))
        else:
            shape = (1, 28) if "fashion" in Path(path).name else (3, 32)
        for name, precision in itertools.product(args.layout, args.precision):
            rows, t_macs, s_macs = bench_config(path, shape, args.steps, args.batch, LAYOUTS[name], precision)
            print(
                f"\n{Path(path).name} ({shape[0]}x{shape[1]}x{shape[1]}; teacher {t_macs / 1e6:.1f} M MACs, "
                f"student {s_macs / 1e6:.1f} M MACs per image), layout {name}, {precision}:"
            )
            print(f"  {'phase':<28}{'images/s':>10}{'GFLOP/s':>9}{'of peak':>9}")
            for phase, ips, flops in rows:
                share = f"{flops / 1e9 / peak:.1%}" if peak else "?"
                print(f"  {phase:<28}{ips:>10.0f}{flops / 1e9:>9.1f}{share:>9}")
    print(f"\n({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
