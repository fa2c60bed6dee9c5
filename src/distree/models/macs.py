"""Multiply-accumulate counts from ``torch.utils.flop_counter``.

FlopCounterMode counts a multiply-add as two FLOPs; everything here reports MACs,
i.e. its FLOP count divided by two. It counts convolutions and matrix products (the
layers that dominate); element-wise ops such as BN and ReLU are not counted.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_macs(fn: Callable[[], object]) -> int:
    """MACs executed by calling ``fn()`` once."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2
