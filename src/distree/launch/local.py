"""Start workers and coordinators as separate local processes, and stop them all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from distree.runtime.security import TLSFiles, make_blocking_channel


def free_port(handed_out: set[int] | None = None) -> int:
    """A TCP port that is free on loopback now; with ``handed_out``, never one in it, and
    added to it: servers started together bind only later, and the kernel may offer a
    port again until then."""
    while (port := free_ports(1)[0]) in (handed_out or ()):
        pass
    if handed_out is not None:
        handed_out.add(port)
    return port


def free_ports(n: int) -> list[int]:
    """``n`` different TCP ports free on loopback now (each socket stays bound until all
    are chosen, so none is offered twice)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def settled_worker_infos(addresses: Sequence[str], timeout_s: float = 10.0, token: str | None = None) -> list:
    """Each worker's Info counters once no group state is left on any of them (drops, and
    eager workers' runs ahead, end after the last answer), or after ``timeout_s``."""
    from distree.runtime.proto import distree_pb2 as pb
    from distree.runtime.proto import distree_pb2_grpc as pb_grpc
    from distree.runtime.security import ClientAuth

    deadline = time.monotonic() + timeout_s
    while True:
        infos = []
        for address in addresses:
            with make_blocking_channel(address, TLSFiles()) as channel:
                metadata = ClientAuth(token, address, expect=lambda who: who.startswith("worker/")).metadata(channel)
                infos.append(pb_grpc.WorkerStub(channel).Info(pb.InfoRequest(), timeout=5, metadata=metadata))
        if all(i.active_states == 0 for i in infos) or time.monotonic() > deadline:
            return infos
        time.sleep(0.05)


def wait_serving(
    address: str, timeout_s: float = 60.0, proc: subprocess.Popen | None = None, tls: TLSFiles = TLSFiles()
) -> None:
    """Block until the gRPC health service at ``address`` says SERVING."""
    deadline = time.monotonic() + timeout_s
    with make_blocking_channel(address, tls) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process for {address} exited with status {proc.returncode}")
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{address} did not become healthy within {timeout_s:.0f}s")


class LocalCluster:
    """N workers and one or more coordinators on loopback, each its own OS process."""

    def __init__(
        self,
        run_dir: str | Path,
        log_dir: Path | None = None,
        token: str | None = None,
        tls: TLSFiles = TLSFiles(),
        placement: Callable[[int], tuple[str, Sequence[str]]] | None = None,
    ):
        self.run_dir = str(run_dir)
        # Where worker i runs: (host to listen on, command prefix), e.g. a network namespace.
        self.placement = placement
        self.tls = tls  # how this process reaches the servers (health checks)
        self.token = token
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.worker_addresses: list[str] = []
        self._logs: list = []
        self._ports: set[int] = set()  # handed out by this cluster

    def _spawn(self, name: str, args: Sequence[str], prefix: Sequence[str] = ()) -> subprocess.Popen:
        out = subprocess.DEVNULL
        if self.log_dir:
            out = open(self.log_dir / f"{name}.log", "a")  # noqa: SIM115 - closed in stop()
            self._logs.append(out)
        cmd = [*prefix, sys.executable, "-m", "distree", *args]
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("DISTREE_WORKER_THREADS", "1"))
        if self.token:  # through the environment: an argument would show in ps
            env["DISTREE_TOKEN"] = self.token
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs[name] = proc
        return proc

    def _launch_worker(
        self, branch: int, port: int | None, extra: Sequence[str], source: str | Path | None = None
    ) -> tuple[str, subprocess.Popen]:
        host, prefix = self.placement(branch) if self.placement else ("127.0.0.1", ())
        address = f"{host}:{port or free_port(self._ports)}"
        args = ["worker", str(source or self.run_dir), "--branch", str(branch), "--listen", address, *extra]
        return address, self._spawn(f"worker{branch}", args, prefix)

    def start_worker(self, branch: int, port: int | None = None, extra: Sequence[str] = ()) -> str:
        """Start (or restart) the worker of ``branch``; returns its address once healthy."""
        address, proc = self._launch_worker(branch, port, extra)
        wait_serving(address, proc=proc, tls=self.tls)
        return address

    def start_workers(self, n: int, extra: Sequence[str] = (), source: str | Path | None = None) -> list[str]:
        """Start ``n`` workers (branches 0..n-1) at once; returns their addresses once healthy.
        ``source``: what they serve instead of the run (an export, with ``--backend onnxruntime``)."""
        launched = [self._launch_worker(b, None, extra, source) for b in range(n)]
        for address, proc in launched:
            wait_serving(address, proc=proc, tls=self.tls)
        self.worker_addresses = [a for a, _ in launched]
        return self.worker_addresses

    def start_coordinator(
        self,
        name: str = "coordinator",
        extra: Sequence[str] = (),
        port: int | None = None,
        source: str | Path | None = None,
        prefix: Sequence[str] = (),
    ) -> str:
        """Start (or restart, on ``port``) a coordinator over the workers; returns its
        address once healthy. ``source``: what it serves instead of the run (an export, with
        ``--backend onnxruntime``); ``prefix``: the command it runs under (e.g. ``env ...``)."""
        return self.start_coordinators({name: extra}, {name: port} if port else None, source=source, prefix=prefix)[
            name
        ]

    def start_coordinators(
        self,
        extras: dict[str, Sequence[str]],
        ports: dict[str, int] | None = None,
        wait: bool = True,
        source: str | Path | None = None,
        prefix: Sequence[str] = (),
    ) -> dict[str, str]:
        """Start one coordinator per name (with its extra arguments, on its port in
        ``ports`` or a free one) at once; returns their addresses once all are healthy
        (at once with ``wait`` False: one whose workers are unusable never is)."""
        launched = {}
        for name, extra in extras.items():
            address = f"127.0.0.1:{(ports or {}).get(name) or free_port(self._ports)}"
            workers = ",".join(self.worker_addresses)
            args = ["serve", str(source or self.run_dir), "--workers", workers, "--listen", address, *extra]
            launched[name] = (address, self._spawn(name, args, prefix))
        for address, proc in launched.values() if wait else ():
            wait_serving(address, proc=proc, tls=self.tls)
        return {name: address for name, (address, _) in launched.items()}

    def start_command(self, name: str, args: Sequence[str], address: str, prefix: Sequence[str] = ()) -> str:
        """Start ``distree ARGS`` (under ``prefix``) as the process ``name`` and return
        ``address`` once it serves there (e.g. ``serve --cluster FILE``)."""
        wait_serving(address, proc=self._spawn(name, args, prefix), tls=self.tls)
        return address

    def cpu_seconds(self) -> dict[str, float]:
        """User + system CPU time each running process has used so far (Linux /proc)."""
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for name, proc in self.procs.items():
            if proc.poll() is None:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[name] = (int(fields[11]) + int(fields[12])) / tick
        return out

    def peak_rss_mib(self, name: str) -> float:
        """The peak resident memory (MiB) of a running process so far (VmHWM, Linux /proc)."""
        for line in Path(f"/proc/{self.procs[name].pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc (Linux only)")

    def kill(self, name: str) -> None:
        """SIGKILL one process (a device dying)."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        """Terminate every process, then kill what is left after a grace period."""
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 5
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in self._logs:
            f.close()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
