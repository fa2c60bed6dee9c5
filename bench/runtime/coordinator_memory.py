"""A coordinator's peak memory with its exit heads in torch (a run) and in onnxruntime (an
export, no torch in the process), over the same onnxruntime workers.

Both coordinators answer the same requests (the test split's first ``--requests`` images,
one call each, so that every group, stage and head runs many times), then each process's
peak resident memory is read (VmHWM, /proc, Linux). Memory, unlike time, does not depend
on what else the machine runs. The answers of the two are compared too: exits and
predictions.

Usage: python bench/runtime/coordinator_memory.py RUN_DIR --data PATH [--requests 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from distree.data import load_data
from distree.export.onnx_export import export_onnx
from distree.launch.local import LocalCluster
from distree.provenance import machine
from distree.run import RunDir
from distree.runtime.client import DistreeClient


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--data", required=True)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    run = RunDir(args.run_dir)
    meta = run.meta
    splits = load_data(args.data, None, meta.config.data.val_fraction, meta.config.data.split_seed)
    images = splits.test.images[: args.requests].numpy()
    export = Path(tempfile.mkdtemp(prefix="distree-coordinator-memory-")) / "export"
    export_onnx(run, export, log=lambda m: None)
    backends = {"torch": {"source": None}, "onnxruntime": {"source": export}}
    with LocalCluster(run.path) as cluster:
        cluster.start_workers(len(meta.config.student.branches), extra=["--backend", "onnxruntime"], source=export)
        answers = {}
        for name, b in backends.items():
            address = cluster.start_coordinator(name, extra=["--backend", name], source=b["source"])
            with DistreeClient(address, timeout_s=30) as client:
                answers[name] = [client.infer(images[i : i + 1])[0] for i in range(len(images))]
            b["peak_rss_mib"] = round(cluster.peak_rss_mib(name), 1)
            del b["source"]
    same = sum(
        (a.exit, a.prediction) == (b.exit, b.prediction)
        for a, b in zip(answers["torch"], answers["onnxruntime"], strict=True)
    )
    print(f"{run.path}: coordinator peak memory after {len(images)} single-image calls (onnxruntime workers)")
    for name, b in backends.items():
        print(f"  heads in {name:<12} {b['peak_rss_mib']:7.1f} MiB")
    print(f"  same exit and prediction on {same} of {len(images)} inputs; {time.perf_counter() - t0:.0f} s in all")
    if args.json:
        result = {
            "run": str(run.path),
            "requests": len(images),
            "machine": f"{machine()}, Python {platform.python_version()}",
            "coordinators": backends,
            "same_exit_and_prediction": same,
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
