"""Code that takes torch tensors and numpy arrays alike, through the array API standard
(``array_api_compat``), without importing torch where none is used."""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace, is_torch_array

__all__ = ["is_torch_array", "namespace"]


def namespace(*arrays: Any) -> Any:
    """The array API namespace of ``arrays`` (numpy's or torch's, as the standard names
    its functions); None entries are skipped."""
    return array_namespace(*(a for a in arrays if a is not None))
