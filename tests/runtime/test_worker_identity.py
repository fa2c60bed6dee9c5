"""What a coordinator accepts as its workers, and what a worker holds: a worker given twice,
for another branch, under two addresses or with other weights is refused by name; a token
that differs is said so; a worker past its state limit refuses more. On gRPC servers in
this process; the coordinator's log records are read from ``caplog``."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil

import grpc
import pytest
from conftest import RUNTIME_BRANCHES, until
from servers import ThreadCluster

from distree.cli.main import main
from distree.runtime.client import DistreeClient
from distree.runtime.proto import distree_pb2 as pb
from distree.runtime.proto import distree_pb2_grpc as pb_grpc
from distree.runtime.worker import WorkerOptions


@pytest.fixture
def logged(caplog):
    """The coordinator's log so far, one line per record with its fields."""
    caplog.set_level(logging.INFO, logger="distree")

    def text() -> str:
        return "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records if r.name == "distree.coordinator")

    return text


@contextlib.contextmanager
def _logging_kept():
    """The "distree" logger as it was after a command run here (``serve`` routes it to stderr)."""
    logger = logging.getLogger("distree")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    try:
        yield
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def test_workers_given_twice_or_for_another_branch_are_refused(trained, capsys, logged):
    run, splits = trained
    with ThreadCluster(run.path) as cluster:
        w = cluster.start_workers(RUNTIME_BRANCHES)
        with _logging_kept():
            argv = ["serve", str(run.path), "--workers", f"{w[0]},{w[0]},{w[2]}", "--listen", "127.0.0.1:0"]
            assert main(argv) == 2
        assert "given more than once" in capsys.readouterr().err
        # Branches 0 and 1 swapped: both refused, loudly; branch 2 answers alone.
        coord = cluster.start_coordinator(workers=[w[1], w[0], w[2]])
        with DistreeClient(coord) as client:
            answers = client.infer(splits.test.images[:4])
    assert all(a.branches == [2] for a in answers)
    assert "worker refused" in logged() and "serves branch 1, but this address is given for branch 0" in logged()


def test_one_worker_reached_under_two_addresses_is_refused_the_second_time(trained, logged):
    run, splits = trained
    with ThreadCluster(run.path) as cluster:
        w = cluster.start_workers(RUNTIME_BRANCHES)
        alias = w[0].replace("127.0.0.1", "localhost")  # the same process, by another name
        coord = cluster.start_coordinator(workers=[w[0], alias, w[2]])
        assert until(lambda: "already used at" in logged()), logged()
        with DistreeClient(coord) as client:
            answers = client.infer(splits.test.images[:4])
    assert all(a.branches == [0, 2] for a in answers)  # branch 0's worker fused once, not twice
    refused = [ln for ln in logged().splitlines() if ln.startswith("worker refused")]
    assert any(f"already used at {w[0]} (branch 0)" in ln and alias in ln for ln in refused)


def _other_weights(run_dir):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(run_dir / "student.safetensors"))
    key = next(k for k in sorted(tensors) if k.startswith("branches.1.") and tensors[k].is_floating_point())
    tensors[key] = tensors[key] + 0.01  # the same architecture, other weights
    save_file(tensors, str(run_dir / "student.safetensors"))


def _other_normalisation(run_dir):
    # The same weights, fed differently: every answer would change, silently.
    meta = json.loads((run_dir / "run.json").read_text())
    meta["data"]["mean"] = [m + 0.05 for m in meta["data"]["mean"]]
    (run_dir / "run.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (_other_weights, "worker serves branch 1 with other weights"),
        (_other_normalisation, "worker serves branch 1 with another input normalisation or image shape"),
    ],
    ids=["weights", "normalisation"],
)
def test_a_worker_whose_answers_would_differ_is_refused_naming_why(trained, tmp_path, logged, change, said):
    run, splits = trained
    other = tmp_path / "other-run"
    shutil.copytree(run.path, other)
    change(other)
    with ThreadCluster(run.path) as cluster, ThreadCluster(other) as stranger:
        w0, w2 = cluster.start_worker(0), cluster.start_worker(2)
        coord = cluster.start_coordinator(workers=[w0, stranger.start_worker(1), w2])
        with DistreeClient(coord) as client:
            answers = client.infer(splits.test.images[:4])
    assert all(a.branches == [0, 2] for a in answers)
    assert said in logged()


def test_a_coordinator_with_another_token_than_its_workers_says_so(trained, logged):
    run, _ = trained
    with ThreadCluster(run.path, token="s3cret") as boards, ThreadCluster(run.path, token="other") as coordinator:
        workers = boards.start_workers(RUNTIME_BRANCHES)
        coordinator.start_coordinator(workers=workers, wait=False)
        rejected = [f"'address': '{w}'" for w in workers]
        assert until(lambda: all(a in logged() for a in rejected)), logged()
    # The workers answer the coordinator's challenge with the other key: each is refused
    # before the coordinator proves anything to it.
    lines = [ln for ln in logged().splitlines() if "did not prove that it holds the shared key" in ln]
    assert {a for a in rejected if any(a in ln for ln in lines)} == set(rejected)


def test_a_worker_refuses_state_past_its_limits(trained):
    run, splits = trained
    image = splits.test.images[:1]
    tensor = pb.Tensor(dtype="uint8", shape=list(image.shape), data=image.numpy().tobytes())
    with ThreadCluster(run.path) as cluster:
        address = cluster.start_worker(0, WorkerOptions(max_states=2), debug_rpcs=True)
        with grpc.insecure_channel(address) as ch:
            stub = pb_grpc.WorkerDebugStub(ch)
            for gid in ("a", "b"):
                stub.RunStage(pb.StageRequest(group_id=gid, stage=0, input=tensor), timeout=5)
            with pytest.raises(grpc.RpcError) as err:
                stub.RunStage(pb.StageRequest(group_id="c", stage=0, input=tensor), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-states" in err.value.details()
            stub.Drop(pb.DropRequest(group_id="a"), timeout=5)
            stub.RunStage(pb.StageRequest(group_id="c", stage=0, input=tensor), timeout=5)  # room again


@pytest.mark.parametrize(
    ("how", "said"),
    [
        ("noise", "did not prove that it holds the shared key"),
        ("relay", "holds the key but is 'worker/0', not 'worker/1'"),
        ("keyless", "runs without a key"),
    ],
)
def test_an_impostor_on_a_workers_port_never_receives_a_proof(trained, logged, how, said):
    from concurrent import futures

    from distree.launch.chaos import Impostor
    from distree.launch.local import free_port
    from distree.runtime.security import ClientAuth

    run, splits = trained
    with ThreadCluster(run.path, token="s3cret") as cluster:
        w0, w2 = cluster.start_worker(0), cluster.start_worker(2)
        impostor = Impostor(how, relay_to=w0)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        server.add_generic_rpc_handlers((impostor,))
        port = free_port()
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        try:
            coord = cluster.start_coordinator(workers=[w0, f"127.0.0.1:{port}", w2])
            assert until(lambda: said in logged()), logged()
            with DistreeClient(coord, token="s3cret") as client:
                answers = client.infer(splits.test.images[:4])
            assert all(a.branches == [0, 2] for a in answers)
            # A proof seen on the way to one worker is good on no other server.
            with grpc.insecure_channel(w0) as ch:
                proof = ClientAuth("s3cret").metadata(ch)
            with grpc.insecure_channel(w2) as ch, pytest.raises(grpc.RpcError) as refused:
                pb_grpc.WorkerStub(ch).Info(pb.InfoRequest(), timeout=5, metadata=proof)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            server.stop(None)
    assert impostor.seen, "the coordinator never tried the impostor"
    assert {m for m, _ in impostor.seen} <= {"/grpc.health.v1.Health/Check", "/distree.Auth/Challenge"}
    assert impostor.proofs == 0 and not any("s3cret" in str(md) for _, md in impostor.seen)


def test_connections_beyond_the_limit_are_refused_and_idle_ones_closed(trained):
    import socket
    import time

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from distree.runtime.security import ServerLimits

    run, _ = trained
    limits = ServerLimits(max_connections=2, idle_timeout_s=1.0, handshake_timeout_s=1.0)
    with ThreadCluster(run.path) as cluster:
        address = cluster.start_worker(0, limits=limits)
        host, port = address.rsplit(":", 1)
        channels, answers = [], []
        for _ in range(3):
            # Each channel its own connection (no subchannel shared between channels).
            ch = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            channels.append(ch)
            try:
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
                answers.append("ok")
            except grpc.RpcError as err:
                answers.append(err.code().name)
        assert answers[:2] == ["ok", "ok"] and answers[2] == "UNAVAILABLE", answers
        for ch in channels:
            ch.close()
        time.sleep(0.5)
        # A silent connection is closed, not held forever.
        silent = socket.create_connection((host, int(port)))
        silent.settimeout(15)
        t0 = time.monotonic()
        assert silent.recv(1 << 16) is not None
        while silent.recv(1 << 16):
            pass
        assert time.monotonic() - t0 < 15
        silent.close()


def test_a_worker_at_another_precision_is_named_as_such():
    from distree.run import with_precision
    from distree.runtime.worker_link import fingerprint_mismatch

    fp32 = "0123abcd-9f9f9f9f"
    assert with_precision(fp32, "fp32") == fp32
    int8 = with_precision(fp32, "int8")
    assert int8 != fp32
    said = fingerprint_mismatch(1, int8, fp32)
    assert "another precision (int8; the coordinator's model is fp32" in said
    assert "other weights" in fingerprint_mismatch(1, "ffff0000-9f9f9f9f", fp32)
    assert "input normalisation" in fingerprint_mismatch(1, "0123abcd-00000000", fp32)
