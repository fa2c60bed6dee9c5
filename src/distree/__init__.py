"""distree: distributed early-exit DNN inference on edge devices."""

__version__ = "0.1.0"
