"""Tensors on the wire: raw bytes with dtype and shape, checked on arrival."""

from __future__ import annotations

import numpy as np
import torch

from distree.runtime.proto import distree_pb2 as pb

DTYPES = {"uint8": np.uint8, "float32": np.float32}


class InvalidTensor(ValueError):
    """A tensor on the wire is malformed; the message says how."""


def to_proto(t: torch.Tensor) -> pb.Tensor:
    """Encode a uint8 or float32 tensor."""
    arr = t.detach().cpu().contiguous().numpy()
    name = arr.dtype.name
    if name not in DTYPES:
        raise InvalidTensor(f"cannot send dtype {name}; only {', '.join(DTYPES)}")
    return pb.Tensor(dtype=name, shape=list(arr.shape), data=arr.astype(arr.dtype.newbyteorder("<")).tobytes())


def from_proto(
    msg: pb.Tensor,
    what: str,
    dtypes: tuple[str, ...] = ("uint8", "float32"),
    shape: tuple[int | None, ...] | None = None,
    max_elements: int = 1 << 24,
) -> torch.Tensor:
    """Decode and validate: dtype in ``dtypes``, shape matching ``shape`` (None = any size),
    at most ``max_elements`` elements, byte count consistent, finite values."""
    if msg.dtype not in dtypes:
        raise InvalidTensor(f"{what}: dtype {msg.dtype!r} not accepted (expected {' or '.join(dtypes)})")
    dims = tuple(int(d) for d in msg.shape)
    if any(d < 0 for d in dims):
        raise InvalidTensor(f"{what}: negative dimension in shape {dims}")
    if shape is not None:
        if len(dims) != len(shape) or any(s is not None and s != d for s, d in zip(shape, dims)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise InvalidTensor(f"{what}: shape {dims} does not match the expected {want}")
    count = int(np.prod(dims)) if dims else 1
    if count == 0:
        raise InvalidTensor(f"{what}: empty tensor of shape {dims}")
    if count > max_elements:
        raise InvalidTensor(f"{what}: {count} elements is over the limit of {max_elements}")
    dt = np.dtype(DTYPES[msg.dtype]).newbyteorder("<")
    if len(msg.data) != count * dt.itemsize:
        raise InvalidTensor(
            f"{what}: {len(msg.data)} bytes for shape {dims} of {msg.dtype} (expected {count * dt.itemsize})"
        )
    arr = np.frombuffer(msg.data, dtype=dt).reshape(dims).astype(DTYPES[msg.dtype])
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidTensor(f"{what}: contains NaN or infinite values")
    return torch.from_numpy(arr.copy())
