"""Data sets: on-disk formats, loading and caching, splits and batch augmentation."""

from distree.data.dataset import DataError, DataSplits, ImageSet
from distree.data.loading import ENV_VAR, load_data

__all__ = ["ENV_VAR", "DataError", "DataSplits", "ImageSet", "load_data"]
