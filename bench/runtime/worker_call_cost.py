"""What one call to a worker costs: wall time at the caller and CPU time in the worker.

Starts one worker of RUN_DIR as its own process, then calls it from a blocking client for a
few seconds per call kind: RunStage (one stage of one request), RunStages (the same, in a
batch message), Session (the same batch as a message on one open stream, as the
coordinator sends it) and Info (no work: the bare cost of a gRPC call). Worker CPU comes from
/proc (Linux). Compare with the in-process compute time of a stage to see the runtime's
own cost per stage.

Usage: python bench/runtime/worker_call_cost.py RUN_DIR [--seconds 4] [--rows 1]
"""

from __future__ import annotations

import argparse
import queue
import time
import uuid

import grpc
import torch

from distree.launch.local import LocalCluster
from distree.run import RunDir
from distree.runtime.proto import distree_pb2 as pb
from distree.runtime.proto import distree_pb2_grpc as pb_grpc
from distree.runtime.stage_runner import StageRunner
from distree.runtime.tensors import to_proto
from distree.runtime.torch_stages import TorchStages


def main() -> None:
    """Measure each call kind and the in-process stage compute."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rows", type=int, default=1, help="inputs per request")
    args = ap.parse_args()
    # Workers started by LocalCluster compute on one thread; so does this reference.
    torch.set_num_threads(1)
    run = RunDir(args.run_dir)
    meta = run.read_meta()
    image = torch.zeros(args.rows, meta.data.in_channels, meta.data.image_size, meta.data.image_size, dtype=torch.uint8)

    local = StageRunner(TorchStages(run, 0, torch.device("cpu")), 0, max_batch=128, max_wait_ms=0.0)
    local.load()
    stages = local.num_stages
    t0, n = time.process_time(), 0
    while time.process_time() - t0 < args.seconds:
        h = image
        for k in range(stages):
            h, _ = local._compute(k, h)
        n += 1
    print(
        f"in-process stage compute (batch {args.rows}, one thread): "
        f"{(time.process_time() - t0) / (n * stages) * 1000:.3f} ms CPU per stage"
    )

    with LocalCluster(run.path) as cluster:
        address = cluster.start_workers(1, extra=["--debug-rpcs"])[0]
        with grpc.insecure_channel(address) as channel:
            stub, debug = pb_grpc.WorkerStub(channel), pb_grpc.WorkerDebugStub(channel)
            outbox: queue.Queue[pb.StageBatch | None] = queue.Queue()
            replies = stub.Session(iter(outbox.get, None), timeout=600)
            for kind in ("RunStage", "RunStages", "Session", "Info"):
                calls, cpu0, t0 = 0, cluster.cpu_seconds()["worker0"], time.perf_counter()
                while time.perf_counter() - t0 < args.seconds:
                    gid = uuid.uuid4().hex
                    for k in range(stages):
                        req = pb.StageRequest(group_id=gid, stage=k, input=to_proto(image) if k == 0 else None)
                        if kind == "RunStage":
                            debug.RunStage(req, timeout=5)
                        elif kind == "RunStages":
                            debug.RunStages(pb.StageBatch(items=[req]), timeout=5)
                        elif kind == "Session":
                            outbox.put(pb.StageBatch(items=[req], seq=calls + 1))
                            next(replies)
                        else:
                            stub.Info(pb.InfoRequest(), timeout=5)
                        calls += 1
                wall = (time.perf_counter() - t0) / calls * 1000
                cpu = (cluster.cpu_seconds()["worker0"] - cpu0) / calls * 1000
                print(f"{kind:<10} {calls:>6} calls: {wall:.3f} ms wall per call, {cpu:.3f} ms worker CPU per call")
            outbox.put(None)


if __name__ == "__main__":
    main()
