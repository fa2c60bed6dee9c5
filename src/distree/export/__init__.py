"""A trained run as files a small board can serve: one ONNX file per branch stage and per
exit head, and a manifest. ``manifest`` and ``ort`` import neither torch nor the rest of
distree's model code; ``onnx_export`` (which makes the files) needs torch."""
