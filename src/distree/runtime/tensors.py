"""Tensors on the wire: raw bytes with dtype and shape, checked on arrival.

numpy arrays on both sides (``to_proto`` also takes a torch tensor): ``array_from_proto``
gives numpy arrays, which a process without torch can use (the coordinator on an export,
an onnxruntime worker) and a torch one takes as they are (``torch.from_numpy``)."""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

import numpy as np

from distree.runtime.proto import distree_pb2 as pb

DTYPES = {"uint8": np.uint8, "float32": np.float32}
_WIRE_DTYPE = {np.dtype(v): k for k, v in DTYPES.items()}  # torch hands out native order
_LITTLE = {k: np.dtype(v).newbyteorder("<") for k, v in DTYPES.items()}
_NATIVE_IS_LITTLE = sys.byteorder == "little"

if TYPE_CHECKING:
    import torch


class InvalidTensor(ValueError):
    """A tensor on the wire is malformed; the message says how."""


def to_proto(t: np.ndarray | torch.Tensor) -> pb.Tensor:
    """Encode a uint8 or float32 array (or torch tensor)."""
    arr = np.ascontiguousarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t)
    name = _WIRE_DTYPE.get(arr.dtype)
    if name is None:
        raise InvalidTensor(f"cannot send dtype {arr.dtype.name}; only {', '.join(DTYPES)}")
    data = arr.tobytes() if _NATIVE_IS_LITTLE else arr.astype(_LITTLE[name]).tobytes()
    return pb.Tensor(dtype=name, shape=arr.shape, data=data)


def array_from_proto(
    msg: pb.Tensor,
    what: str,
    dtypes: tuple[str, ...] = ("uint8", "float32"),
    shape: tuple[int | None, ...] | None = None,
    max_elements: int = 1 << 24,
) -> np.ndarray:
    """Decode and validate: dtype in ``dtypes``, shape matching ``shape`` (None = any size),
    at most ``max_elements`` elements, byte count consistent, finite values."""
    if msg.dtype not in dtypes:
        raise InvalidTensor(f"{what}: dtype {msg.dtype!r} not accepted (expected {' or '.join(dtypes)})")
    dims = tuple(msg.shape)
    if any(d < 0 for d in dims):
        raise InvalidTensor(f"{what}: negative dimension in shape {dims}")
    if shape is not None and (len(dims) != len(shape) or any(s is not None and s != d for s, d in zip(shape, dims))):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise InvalidTensor(f"{what}: shape {dims} does not match the expected {want}")
    count = math.prod(dims)
    if count == 0:
        raise InvalidTensor(f"{what}: empty tensor of shape {dims}")
    if count > max_elements:
        raise InvalidTensor(f"{what}: {count} elements is over the limit of {max_elements}")
    dt = _LITTLE[msg.dtype]
    if len(msg.data) != count * dt.itemsize:
        raise InvalidTensor(
            f"{what}: {len(msg.data)} bytes for shape {dims} of {msg.dtype} (expected {count * dt.itemsize})"
        )
    arr = np.frombuffer(msg.data, dtype=dt).reshape(dims)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidTensor(f"{what}: contains NaN or infinite values")
    # A copy in native byte order: the message's bytes are read-only.
    return arr.astype(DTYPES[msg.dtype])
