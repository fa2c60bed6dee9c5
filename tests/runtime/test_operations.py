"""Operating a cluster: ports, misassigned workers, truthful health, clean shutdown,
secrets and the health command, with real processes on loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from conftest import RUNTIME_BRANCHES, until
from grpc_health.v1 import health_pb2, health_pb2_grpc

from distree.launch.local import LocalCluster, free_port
from distree.runtime.client import DistreeClient, InferenceError
from distree.runtime.proto import distree_pb2 as pb
from distree.runtime.proto import distree_pb2_grpc as pb_grpc
from distree.runtime.security import ClientAuth

pytestmark = pytest.mark.e2e  # real processes: ports, signals, kills and pauses


def _health(address: str) -> int:
    """``distree health ADDRESS``'s exit status: 0 serving, 1 not serving, 2 unreachable."""
    return subprocess.run([sys.executable, "-m", "distree", "health", address], capture_output=True).returncode


def _serving(address: str) -> bool:
    """The same question asked from here: polled without a process per poll."""
    with grpc.insecure_channel(address) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_worker_on_a_taken_port_fails_to_start(trained, tmp_path):
    run, _ = trained
    with LocalCluster(run.path, log_dir=tmp_path) as cluster:
        port = free_port()
        cluster.start_worker(0, port=port)
        # (Its health check would reach the first worker: wait for the process itself.)
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "distree",
                "worker",
                str(run.path),
                "--branch",
                "1",
                "--listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert second.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in second.stderr


def test_health_tells_the_truth_and_sigterm_drains(trained, tmp_path):
    run, _ = trained
    assert _health(f"127.0.0.1:{free_port()}") == 2
    with LocalCluster(run.path, log_dir=tmp_path) as cluster:
        workers = cluster.start_workers(RUNTIME_BRANCHES)
        coord = cluster.start_coordinator()
        assert _health(coord) == 0 and _health(workers[0]) == 0
        for b in range(RUNTIME_BRANCHES):
            cluster.kill(f"worker{b}")
        assert until(lambda: not _serving(coord)), "the coordinator should say NOT_SERVING with no worker up"
        assert _health(coord) == 1
        cluster.start_worker(0, port=int(workers[0].rsplit(":", 1)[1]))
        assert until(lambda: _serving(coord)), "...and SERVING again once one is back"
        for name in ("coordinator", "worker0"):
            proc = cluster.procs[name]
            proc.terminate()  # SIGTERM, as docker stop and systemd send
            assert proc.wait(timeout=15) == 0
    for name in ("coordinator", "worker0"):
        log = (tmp_path / f"{name}.log").read_text()
        assert '"msg": "stopping"' in log and '"msg": "stopped"' in log


def test_a_token_file_keeps_the_secret_off_the_command_line(trained, tmp_path):
    run, _ = trained
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    with LocalCluster(run.path, log_dir=tmp_path) as cluster:
        address = cluster.start_worker(0, extra=["--token-file", str(secret)])
        assert "s3cret" not in " ".join(cluster.procs["worker0"].args)
        with grpc.insecure_channel(address) as ch:
            stub = pb_grpc.WorkerStub(ch)
            with pytest.raises(grpc.RpcError) as err:
                stub.Info(pb.InfoRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert stub.Info(pb.InfoRequest(), timeout=5, metadata=ClientAuth("s3cret").metadata(ch)).branch == 0


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) listening on ``port``."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            out.add(local.split(":")[0])
    return out


def test_metrics_listen_where_the_service_does_and_a_taken_port_is_one_line(trained, tmp_path):
    run, _ = trained
    port = free_port()
    with LocalCluster(run.path, log_dir=tmp_path) as cluster:
        cluster.start_worker(0, extra=["--metrics-port", str(port)])
        assert _listening(port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0
        with pytest.raises(RuntimeError, match="exited with status 1"):
            cluster.start_worker(1, extra=["--metrics-port", str(port)])
    log = (tmp_path / "worker1.log").read_text()
    assert f"cannot serve metrics on 127.0.0.1:{port}" in log and "Traceback" not in log


def test_a_paused_worker_is_left_out_then_used_again(trained, tmp_path):
    import os
    import signal

    run, splits = trained
    images = splits.test.images[:2]
    with LocalCluster(run.path, log_dir=tmp_path) as cluster:
        cluster.start_workers(RUNTIME_BRANCHES)
        coord = cluster.start_coordinator(extra=["--stage-timeout-ms", "300"])
        paused = cluster.procs["worker1"].pid
        with DistreeClient(coord) as client:
            assert all(a.branches == [0, 1, 2] for a in client.infer(images))
            os.kill(paused, signal.SIGSTOP)  # alive, silent: a frozen board
            try:
                answers = client.infer(images) + client.infer(images)
            finally:
                os.kill(paused, signal.SIGCONT)
            assert all(a.branches == [0, 2] for a in answers)
            assert until(lambda: client.infer(images[:1])[0].branches == [0, 1, 2])


def test_sigterm_answers_the_calls_in_flight_and_workers_exit_quickly(trained, tmp_path):
    import os
    import signal
    import threading
    import time

    run, splits = trained
    with LocalCluster(run.path, log_dir=tmp_path) as cluster:
        # A grace period far longer than the exit it allows: a worker that waited it out with
        # sessions open would take 30 s, one that exits as it should takes a fraction of it.
        workers = cluster.start_workers(RUNTIME_BRANCHES, extra=["--grace-s", "30"])
        # The same grace for the coordinator: it must end the streams its clients keep open
        # (``idle`` below) itself, once their calls are answered, not wait the grace out.
        coord = cluster.start_coordinator(extra=["--grace-s", "30"])
        idle = DistreeClient(coord)
        idle.infer(splits.test.images[:1])  # sessions to every worker are open, and idle's stream
        # A paused worker holds every call at stage 0 until the stage deadline (1 s).
        paused = cluster.procs["worker2"]
        os.kill(paused.pid, signal.SIGSTOP)
        answers, errors = [], []

        def call(i: int) -> None:
            try:
                with DistreeClient(coord, timeout_s=30) as c:
                    answers.append(c.infer(splits.test.images[i : i + 1]))
            except Exception as err:  # noqa: BLE001 - every failure is reported below
                errors.append(err)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        time.sleep(0.3)  # the calls are in flight
        cluster.procs["coordinator"].terminate()
        for t in threads:
            t.join(timeout=30)
        os.kill(paused.pid, signal.SIGCONT)
        assert cluster.procs["coordinator"].wait(timeout=15) == 0
        with pytest.raises(InferenceError) as gone:
            idle.infer(splits.test.images[:1])
        assert gone.value.code == grpc.StatusCode.UNAVAILABLE
        idle.close()
        assert not errors and len(answers) == 16, errors[:3]
        # A worker whose session is open exits at once on SIGTERM (it has no call in flight),
        # without a traceback, not after its grace period: seconds at most on a loaded machine.
        worker = cluster.procs["worker0"]
        t0 = time.monotonic()
        worker.terminate()
        assert worker.wait(timeout=30) == 0
        assert time.monotonic() - t0 < 10.0
        del workers
    assert "Traceback" not in (tmp_path / "worker0.log").read_text()
    assert "Traceback" not in (tmp_path / "coordinator.log").read_text()
