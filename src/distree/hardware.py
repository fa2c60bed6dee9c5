"""Choice of compute device and of mixed precision."""

from __future__ import annotations

import contextlib

import torch


def pick_device(name: str | None = None) -> torch.device:
    """``name`` if given, else CUDA when present, else the CPU."""
    if name:
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """Mixed precision for ``precision``: ``bf16`` (no loss scaling needed), ``fp32``, or
    ``auto``: bf16 on CUDA, full precision elsewhere.

    bf16 on a CPU is opt-in: with AVX512-BF16 it trains 1.2 to 1.9x faster
    (bench/training/train_throughput.py); without it torch emulates bf16, which is expected
    to be slower than fp32 (not measured: the development machine has AVX512-BF16).
    """
    if resolved_precision(device, precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolved_precision(device: torch.device, precision: str = "auto") -> str:
    """``bf16`` or ``fp32``: what ``precision`` (``OptimConfig.precision``) computes in on ``device``."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    return "bf16" if precision == "bf16" or (precision == "auto" and device.type == "cuda") else "fp32"


def training_memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (tensor cores) and on CPUs with AVX-512; the default layout on
    other CPUs.

    On AVX-512 CPUs channels_last trains faster (bench/training/train_throughput.py measures
    both layouts). On AVX2-only CPUs it was only about 10%
    faster, and oneDNN 3.12 (torch 2.13) aborts there in the convolution backward pass with
    channels_last under one thread.
    """
    if device.type == "cuda" or torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return torch.channels_last
    return torch.contiguous_format
