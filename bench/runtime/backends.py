"""A worker's backends side by side: torch fp32, onnxruntime fp32 and onnxruntime int8.

For each backend, in one run (compare the ratios; the machine is shared):
- stage latency at batch 1: every stage of branch 0 in this process, one compute thread,
  median over the repeats of one pass through all stages;
- a worker process's peak memory (VmHWM from /proc, Linux): a real `distree worker` serving
  branch 0 (one thread), after the same requests through its debug RPCs;
- the installed size of the backend's own package on this machine (torch, or
  onnxruntime; numpy and grpcio are common to both).

The int8 export's activation ranges come from the validation split (`--data`). Accuracy
and saving of each export: `distree eval RUN --backend onnxruntime --export DIR`.

Usage: python bench/runtime/backends.py RUN_DIR --data PATH [--repeats 200] [--requests 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import uuid
from importlib.util import find_spec
from pathlib import Path

import grpc
import numpy as np
import torch

from distree.data import load_data
from distree.export.onnx_export import export_onnx
from distree.export.ort import OrtBranch
from distree.launch.local import LocalCluster
from distree.provenance import machine
from distree.run import RunDir
from distree.runtime.proto import distree_pb2 as pb
from distree.runtime.proto import distree_pb2_grpc as pb_grpc
from distree.runtime.tensors import to_proto
from distree.runtime.torch_stages import TorchStages


def _package_mib(name: str) -> float:
    root = Path(find_spec(name).origin).parent
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 2**20


def _pass_ms(run_stage, image, stages: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        h = image
        for k in range(stages):
            h, _ = run_stage(k, h)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    """Export, measure each backend, print a table (and --json)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--data", required=True, help="the run's data set (the int8 export reads its validation split)")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args()
    run = RunDir(args.run_dir)
    meta = run.meta
    torch.set_num_threads(1)
    splits = load_data(args.data, None, meta.config.data.val_fraction, meta.config.data.split_seed)
    image = splits.test.images[:1].numpy()
    work = Path(tempfile.mkdtemp(prefix="distree-backends-"))
    exports = {"onnxruntime fp32": work / "fp32", "onnxruntime int8": work / "int8"}
    export_onnx(run, exports["onnxruntime fp32"], log=lambda m: None)
    export_onnx(run, exports["onnxruntime int8"], int8_images=splits.val.images[:512], log=lambda m: None)

    torch_branch = TorchStages(run, 0, torch.device("cpu"))
    torch_branch.load()
    runners = {"torch fp32": (torch_branch.compute, torch.from_numpy(image))}
    for name, d in exports.items():
        runners[name] = (OrtBranch(d, 0, threads=1).run_stage, image)
    stages = torch_branch.num_stages
    rows = {}
    for name, (run_stage, x) in runners.items():
        _pass_ms(run_stage, x, stages, 10)  # warm
        rows[name] = {"branch_pass_ms_batch1": round(_pass_ms(run_stage, x, stages, args.repeats), 3)}
    for name in runners:
        source, extra = (run.path, []) if name == "torch fp32" else (exports[name], ["--backend", "onnxruntime"])
        with LocalCluster(run.path) as cluster:
            address = cluster.start_workers(1, extra=[*extra, "--threads", "1", "--debug-rpcs"], source=source)[0]
            with grpc.insecure_channel(address) as channel:
                debug = pb_grpc.WorkerDebugStub(channel)
                for _ in range(args.requests):
                    gid = uuid.uuid4().hex
                    for k in range(stages):
                        debug.RunStage(
                            pb.StageRequest(group_id=gid, stage=k, input=to_proto(image) if k == 0 else None),
                            timeout=10,
                        )
            rows[name]["worker_peak_rss_mib"] = round(cluster.peak_rss_mib("worker0"), 1)
    rows["torch fp32"]["package_mib"] = round(_package_mib("torch"), 1)
    for name, folder in exports.items():
        rows[name]["package_mib"] = round(_package_mib("onnxruntime"), 1)
        rows[name]["export_mib"] = round(sum(f.stat().st_size for f in folder.iterdir()) / 2**20, 2)
    base = rows["torch fp32"]["branch_pass_ms_batch1"]
    print(f"{run.path}, branch 0 ({stages} stages), one compute thread, batch 1:")
    for name, r in rows.items():
        ms = r["branch_pass_ms_batch1"]
        print(
            f"  {name:<18} {ms:8.3f} ms per pass ({ms / base:.2f}x torch)"
            f"   worker peak {r['worker_peak_rss_mib']:7.1f} MiB   package {r['package_mib']:7.1f} MiB"
        )
    result = {
        "run": str(run.path),
        "machine": f"{machine()}, Python {platform.python_version()}",
        "numpy": np.__version__,
        "torch": torch.__version__,
        "backends": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
