"""The runtime over the network: workers and coordinators as gRPC servers in this process
(``ThreadCluster``) for what the protocol decides, as real processes (``e2e``) where a
worker is killed and restarted."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import torch
from conftest import RUNTIME_BRANCHES
from servers import ThreadCluster

from distree.evaluation.measures import model_thresholds
from distree.inference.records import student_exits
from distree.launch.local import LocalCluster, settled_worker_infos
from distree.policies import decide_exits, exit_scores, make_policy
from distree.run import RunDir
from distree.runtime.client import DistreeClient, InferenceError
from distree.runtime.coordinator import CoordinatorOptions
from distree.runtime.proto import distree_pb2 as pb
from distree.runtime.proto import distree_pb2_grpc as pb_grpc
from distree.runtime.security import ClientAuth

N_BRANCHES = RUNTIME_BRANCHES


def _info(address: str, token: str | None = None) -> pb.InfoReply:
    with grpc.insecure_channel(address) as ch:
        return pb_grpc.WorkerStub(ch).Info(pb.InfoRequest(), timeout=5, metadata=ClientAuth(token).metadata(ch))


def _offline(run: RunDir, splits, policy: str):
    student = run.load_student()
    meta = run.read_meta()
    rec = student_exits(student, splits.test.images, meta.data.normalization, 64, torch.device("cpu"))
    t = model_thresholds(policy, student, run.read_calibration()).at(student.num_branches)
    exits = decide_exits(exit_scores(make_policy(policy), rec), t)
    preds = rec.logits[exits, torch.arange(len(exits))].argmax(-1)
    return preds, exits


@pytest.fixture(scope="module")
def shared_cluster(trained, tmp_path_factory):
    """Workers and one coordinator per mode, shared by the tests that do not break them."""
    run, _ = trained
    with ThreadCluster(run.path) as cluster:
        workers = cluster.start_workers(N_BRANCHES)
        coords = {
            mode: cluster.start_coordinator(CoordinatorOptions(mode=mode, policy="conf-then-feature-diff"))
            for mode in ("lockstep", "eager")
        }
        coords["groups-of-7"] = cluster.start_coordinator(
            CoordinatorOptions(policy="conf-then-feature-diff", max_group_inputs=7)
        )
        yield workers, coords


def _wait_no_state(workers: list[str], timeout_s: float = 10.0) -> list[pb.InfoReply]:
    """Worker counters once every request's state is gone (drops travel after the answer)."""
    return settled_worker_infos(workers, timeout_s)


@pytest.mark.parametrize("mode", ["lockstep", "eager"])
def test_runtime_equals_offline_and_stops_workers(trained, shared_cluster, mode):
    run, splits = trained
    workers, coords = shared_cluster
    preds, exits = _offline(run, splits, "conf-then-feature-diff")
    assert int((exits < exits.max()).sum()) > 0, "the fixture should exit early on some inputs"
    before = _wait_no_state(workers)
    with DistreeClient(coords[mode]) as client:
        answers = client.infer(splits.test.images)
    assert [a.prediction for a in answers] == preds.tolist()
    assert [a.exit for a in answers] == exits.tolist()
    assert all(a.branches == [0, 1, 2] for a in answers)
    infos = _wait_no_state(workers)
    assert all(i.active_states == 0 for i in infos)
    ran = [i.stages_run - b.stages_run for i, b in zip(infos, before)]
    expected = sum(int(e) + 1 for e in exits)
    if mode == "lockstep":
        # Every worker ran exactly the stages up to each input's exit, and no more, and
        # counted the MACs of exactly those.
        assert ran == [expected] * N_BRANCHES
        stage_macs = run.load_student().macs.stage
        macs = [i.macs_run - b.macs_run for i, b in zip(infos, before)]
        assert macs == [sum(sum(stage_macs[b][: int(e) + 1]) for e in exits) for b in range(N_BRANCHES)]
    else:
        # Eager workers run ahead, but are cancelled: never all stages for every input.
        total = len(exits) * len(run.read_meta().config.student.exit_points)
        assert all(expected <= r <= total for r in ran), ran


def test_concurrent_one_input_calls_grouped_equal_offline(trained, shared_cluster):
    """Calls that wait together start as one group; each still gets its own answer."""
    from concurrent.futures import ThreadPoolExecutor

    run, splits = trained
    _, coords = shared_cluster
    preds, exits = _offline(run, splits, "conf-then-feature-diff")
    images = splits.test.images
    with DistreeClient(coords["lockstep"]) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: client.infer(images[i : i + 1])[0], range(len(images))))
    assert [a.prediction for a in answers] == preds.tolist()
    assert [a.exit for a in answers] == exits.tolist()
    assert all(len(a.stage_ms) == a.exit + 1 for a in answers)


def test_no_state_left_after_1000_requests(trained, shared_cluster):
    """500 inputs through each coordinator (lockstep and eager): 1,000 requests in all."""
    _, splits = trained
    workers, coords = shared_cluster
    images = splits.test.images
    for mode in ("lockstep", "eager"):
        with DistreeClient(coords[mode]) as client:
            done = 0
            while done < 500:
                batch = images[: min(50, 500 - done)]
                assert len(client.infer(batch)) == len(batch)
                done += len(batch)
    assert all(i.active_states == 0 for i in _wait_no_state(workers))


@pytest.mark.e2e
def test_kill_worker_mid_run_restart_then_lose_all(trained, tmp_path):
    run, splits = trained
    images = splits.test.images
    with LocalCluster(run.path, log_dir=tmp_path) as cluster:
        workers = cluster.start_workers(N_BRANCHES)
        coord = cluster.start_coordinator(extra=["--stage-timeout-ms", "2000"])
        answers, errors, stop = [], [], threading.Event()

        def load():
            with DistreeClient(coord, timeout_s=30) as client:
                i = 0
                while not stop.is_set():
                    try:
                        answers.append(client.infer(images[i % len(images) : i % len(images) + 1])[0])
                    except InferenceError as err:  # pragma: no cover - reported below
                        errors.append(err)
                    i += 1

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        cluster.kill("worker1")
        killed_at = len(answers)
        time.sleep(1.5)
        port = int(workers[1].rsplit(":", 1)[1])
        cluster.start_worker(1, port=port)
        # The coordinator re-probes with back-off (up to 5 s between tries).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (answers and answers[-1].branches == [0, 1, 2]):
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not errors
        assert any(a.branches == [0, 2] for a in answers[killed_at:]), "requests went on with the other branches"
        assert answers[-1].branches == [0, 1, 2], "the restarted worker is used again"

        # With no branch left, a call fails at once with a clear error instead of hanging.
        for b in range(N_BRANCHES):
            cluster.kill(f"worker{b}")
        with DistreeClient(coord, timeout_s=20) as client:
            t0 = time.monotonic()
            with pytest.raises(InferenceError) as err:
                client.infer(images[:2])
            assert err.value.code == grpc.StatusCode.UNAVAILABLE and "branch" in str(err.value)
            assert time.monotonic() - t0 < 10


def test_token_and_malformed_inputs(trained):
    run, splits = trained
    with ThreadCluster(run.path, token="s3cret") as cluster:
        workers = cluster.start_workers(N_BRANCHES, debug_rpcs=True)
        coord = cluster.start_coordinator()
        with DistreeClient(coord) as client, pytest.raises(InferenceError, match="UNAUTHENTICATED.*token"):
            client.infer(splits.test.images[:1])
        with DistreeClient(coord, token="wrong") as client:
            with pytest.raises(InferenceError, match="UNAUTHENTICATED"):
                client.infer(splits.test.images[:1])
        with pytest.raises(grpc.RpcError) as err:
            _info(workers[0])
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

        good = splits.test.images[:2]
        bad = {
            "dtype": pb.Tensor(dtype="int64", shape=list(good.shape), data=good.long().numpy().tobytes()),
            "shape": pb.Tensor(dtype="uint8", shape=[2, 3, 9, 8], data=bytes(2 * 3 * 9 * 8)),
            "bytes": pb.Tensor(dtype="uint8", shape=list(good.shape), data=good.numpy().tobytes()[:-1]),
            "float32": pb.Tensor(dtype="float32", shape=list(good.shape), data=good.float().numpy().tobytes()),
        }
        with grpc.insecure_channel(coord) as ch:
            md = ClientAuth("s3cret").metadata(ch)  # a proof is good only on the server that challenged
            stub = pb_grpc.CoordinatorStub(ch)
            for what, tensor in bad.items():
                with pytest.raises(grpc.RpcError) as err:
                    stub.Infer(pb.InferRequest(images=tensor), timeout=10, metadata=md)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
                assert "images" in err.value.details()
            with pytest.raises(grpc.RpcError) as err:
                stub.Infer(pb.InferRequest(images=bad["shape"], deadline_ms=float("nan")), timeout=10, metadata=md)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        floats = pb.Tensor(dtype="float32", shape=[1, 3, 8, 8], data=bytes(192 * 4))
        float_input = pb.StageRequest(group_id="x", stage=0, input=floats)
        with grpc.insecure_channel(workers[0]) as ch:
            md = ClientAuth("s3cret").metadata(ch)
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.WorkerDebugStub(ch).RunStage(float_input, timeout=5, metadata=md)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.WorkerDebugStub(ch).RunStage(pb.StageRequest(group_id="y", stage=1), timeout=5, metadata=md)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            # A group of two inputs, then a stage that keeps a row it does not have.
            stub = pb_grpc.WorkerDebugStub(ch)
            two = pb.Tensor(dtype="uint8", shape=list(good.shape), data=good.numpy().tobytes())
            stub.RunStage(pb.StageRequest(group_id="z", stage=0, input=two), timeout=5, metadata=md)
            for keep in ([2], [1, 0], [-1]):
                with pytest.raises(grpc.RpcError) as err:
                    stub.RunStage(pb.StageRequest(group_id="z", stage=1, keep=keep), timeout=5, metadata=md)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "keep" in err.value.details()
            one = stub.RunStage(pb.StageRequest(group_id="z", stage=1, keep=[1]), timeout=5, metadata=md)
            assert list(one.pooled.shape)[0] == 1
            stub.Drop(pb.DropRequest(group_id="z"), timeout=5, metadata=md)
        # ...and everything still serves.
        with DistreeClient(coord, token="s3cret") as client:
            assert len(client.infer(good)) == 2


def test_deadline_stops_at_the_exit_in_hand(trained, shared_cluster):
    _, splits = trained
    _, coords = shared_cluster
    with DistreeClient(coords["lockstep"]) as client:
        answers = client.infer(splits.test.images[:10], deadline_ms=0.001)
        relaxed = client.infer(splits.test.images[:10], deadline_ms=60_000)
    # The first stage alone outlasts a microsecond: every input stops there, by the deadline
    # unless the policy stopped it anyway.
    assert all(a.exit == 0 and a.stop_reason in ("deadline", "policy") for a in answers)
    assert any(a.stop_reason == "deadline" for a in answers)
    assert all(a.stop_reason != "deadline" for a in relaxed)


def test_debug_rpcs_are_served_only_when_asked(shared_cluster):
    workers, _ = shared_cluster
    with grpc.insecure_channel(workers[0]) as ch, pytest.raises(grpc.RpcError) as err:
        pb_grpc.WorkerDebugStub(ch).Drop(pb.DropRequest(group_id="x"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_call_larger_than_a_group_is_answered_in_groups(trained, shared_cluster):
    run, splits = trained
    _, coords = shared_cluster
    preds, exits = _offline(run, splits, "conf-then-feature-diff")
    with DistreeClient(coords["groups-of-7"]) as client:
        answers = client.infer(splits.test.images)
    assert [a.prediction for a in answers] == preds.tolist()
    assert [a.exit for a in answers] == exits.tolist()
    assert all(a.branches == [0, 1, 2] for a in answers)
