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


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 mixed precision on CUDA (no loss scaling needed); full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def training_memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (tensor cores); the default layout on the CPU.

    On the CPU, channels_last training was only about 10% faster (bench/training/train_throughput.py),
    and oneDNN 3.12 (torch 2.13) aborts in the convolution backward pass with channels_last
    on AVX2-only CPUs under one thread.
    """
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format
