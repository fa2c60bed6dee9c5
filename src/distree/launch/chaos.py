"""A chaos soak: load from several clients while workers and the coordinator are killed,
paused and restarted, impostors take a dead worker's port, large calls are abandoned, a
busy neighbour takes a core and idle connections pile up, counting what became of every
call.

Every call must end with its answers or an explicit error: a call that got neither
within the client's timeout is *lost*, a call with more answers than inputs is
*duplicated*, an answer whose class differs from what the model gives offline for the same
input, exit and branches is *wrong*; all must be 0, as must the proofs an impostor
received (the cluster runs with a shared key). For every restarted worker it also
measures the time from the worker saying SERVING to the first answer that fused its
branch (its re-use time).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import torch

from distree.launch.local import LocalCluster
from distree.runtime.client import DistreeClient, InferenceError
from distree.runtime.security import AUTH_HEADER

#: Scripted soaks: answers that must arrive between two events, so each meets a serving cluster.
SETTLE_ANSWERS = 20
EVENTS = (
    "kill-worker",
    "pause-worker",
    "stop-coordinator",
    "kill-coordinator",
    "impostor-worker",
    "abandoned-call",
    "busy-neighbour",
    "idle-connections",
)
#: The shared key of the soak's cluster (so that an impostor has something to steal).
KEY = "chaos-soak-key"
#: How long each of the newer events lasts (s).
EVENT_S = 3.0


@dataclass
class SoakResult:
    """What became of the calls, and how fast restarted workers were used again."""

    calls: int = 0
    inputs: int = 0
    answered: int = 0  # inputs answered
    fewer_branches: int = 0  # inputs answered with fewer than every branch
    errors: Counter = field(default_factory=Counter)  # calls failed with an explicit status
    lost: int = 0  # calls with neither answers nor an error within the client's timeout
    duplicated: int = 0  # calls with more answers than inputs
    wrong: int = 0  # answers whose class is not the model's for that input, exit and branches
    abandoned: int = 0  # large calls given up by their client on purpose (not lost)
    proofs_to_impostors: int = 0  # calls that carried a proof of the key to an impostor
    events: list[tuple[float, str]] = field(default_factory=list)
    #: Per case (the event under way when a call started, "none" before the first): calls,
    #: inputs answered, calls failed with a status, lost, answers wrong.
    by_case: dict[str, Counter] = field(default_factory=dict)
    reuse_s: dict[str, float | None] = field(default_factory=dict)  # restart -> seconds to first use

    def to_json(self) -> dict:
        """JSON-ready."""
        return {
            **self.__dict__,
            "errors": dict(self.errors),
            "by_case": {case: dict(c) for case, c in self.by_case.items()},
        }


def run_soak(
    run_dir: str | Path,
    images: torch.Tensor,
    *,
    seconds: float,
    clients: int = 4,
    events_per_minute: float = 6.0,
    seed: int = 0,
    log_dir: Path | None = None,
    client_timeout_s: float = 30.0,
    extra_coordinator: tuple[str, ...] = (),
    script: list[str] | None = None,
    expected: Callable[[int, int, list[int]], tuple[int, float]] | None = None,
) -> SoakResult:
    """Run the soak on a local cluster of real processes (loopback); see the module doc.
    ``script`` replaces the random events by these (names from ``EVENTS``), each once the
    load has been answered again since the one before; the soak then ends as soon as every
    restarted worker has served again, ``seconds`` being only the most it waits for that.
    ``expected(index, exit, branches)``: the model's class for input ``index`` at that exit
    with those branches, and by how much its probability leads the runner-up (an answer
    that differs where the lead is under 1e-3 is a near tie, not counted as wrong)."""
    rng = random.Random(seed)
    result = SoakResult()
    case = ["none"]  # the event under way: what a call started now is counted under
    deck: list[str] = []  # random events are dealt from a shuffled deck: every case comes up
    lock = threading.Lock()
    stop = threading.Event()
    served: list[tuple[float, list[int]]] = []  # (time, branches) of every answer

    with LocalCluster(run_dir, log_dir=log_dir, token=KEY) as cluster:
        n = len(cluster_branches(run_dir))
        workers = cluster.start_workers(n)
        ports = {b: int(a.rsplit(":", 1)[1]) for b, a in enumerate(workers)}
        coord = cluster.start_coordinator(extra=list(extra_coordinator))
        coord_port = int(coord.rsplit(":", 1)[1])

        def client(k: int) -> None:
            crng = random.Random(seed * 1000 + k)
            with DistreeClient(coord, token=KEY, timeout_s=client_timeout_s) as c:
                while not stop.is_set():
                    during = case[0]
                    size = crng.choice([1, 1, 1, 2, 4, 16])
                    start = crng.randrange(0, len(images) - size + 1)
                    outcome: str
                    try:
                        answers = c.infer(images[start : start + size])
                        outcome = "ok"
                    except InferenceError as err:
                        outcome = err.code.name
                        answers = []
                    now = time.monotonic()
                    with lock:
                        per = result.by_case.setdefault(during, Counter())
                        per["calls"] += 1
                        result.calls += 1
                        result.inputs += size
                        if outcome == "ok":
                            result.answered += len(answers)
                            per["answered"] += len(answers)
                            if expected is not None:
                                for j, a in enumerate(answers):
                                    want, lead = expected(start + j, a.exit, a.branches)
                                    wrong = a.prediction != want and lead >= 1e-3
                                    result.wrong += wrong
                                    per["wrong"] += wrong
                            result.duplicated += len(answers) > size
                            result.fewer_branches += sum(len(a.branches) < n for a in answers)
                            served.extend((now, a.branches) for a in answers)
                        elif outcome == grpc.StatusCode.DEADLINE_EXCEEDED.name:
                            result.lost += 1  # no answer and no error within the timeout
                            per["lost"] += 1
                        else:
                            result.errors[outcome] += 1
                            per["failed"] += 1
                    if outcome != "ok":
                        time.sleep(0.05)

        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
        for t in threads:
            t.start()
        restarts: list[tuple[str, int, float]] = []  # (name, branch, time it said SERVING)
        t0 = time.monotonic()  # the soak's clock starts with the load
        try:
            queue = list(script) if script is not None else None
            # Scripted: every event, evenly spaced; random: while the time lasts.
            while queue if queue is not None else time.monotonic() - t0 < seconds:
                if queue is not None:  # scripted: the next event once answers flow again
                    mark = result.answered
                    _wait(lambda m=mark: result.answered >= m + SETTLE_ANSWERS, t0 + seconds)
                else:
                    time.sleep(rng.expovariate(events_per_minute / 60))
                    if time.monotonic() - t0 >= seconds:
                        break
                if queue is None and not deck:
                    deck = rng.sample(EVENTS, len(EVENTS))
                event = queue.pop(0) if queue is not None else deck.pop()
                case[0] = event
                at = round(time.monotonic() - t0, 2)
                if event in ("kill-worker", "pause-worker"):
                    b = rng.randrange(n)
                    proc = cluster.procs[f"worker{b}"]
                    if event == "kill-worker":
                        cluster.kill(f"worker{b}")
                        time.sleep(rng.uniform(0.5, 3.0))
                        cluster.start_worker(b, port=ports[b])
                        restarts.append((f"worker{b}@{at}s", b, time.monotonic()))
                    else:
                        os.kill(proc.pid, signal.SIGSTOP)
                        time.sleep(rng.uniform(0.5, 3.0))
                        os.kill(proc.pid, signal.SIGCONT)
                    result.events.append((at, f"{event} {b}"))
                elif event == "impostor-worker":
                    b = rng.randrange(n)
                    cluster.kill(f"worker{b}")
                    result.proofs_to_impostors += _impostor(ports[b], EVENT_S)
                    cluster.start_worker(b, port=ports[b])
                    restarts.append((f"worker{b}@{at}s", b, time.monotonic()))
                    result.events.append((at, f"{event} {b}"))
                elif event == "abandoned-call":
                    result.abandoned += _abandon(coord, images)
                    result.events.append((at, event))
                elif event == "busy-neighbour":
                    _busy(EVENT_S)
                    result.events.append((at, event))
                elif event == "idle-connections":
                    _idle_connections(coord, 200, EVENT_S)
                    result.events.append((at, event))
                else:
                    proc = cluster.procs["coordinator"]
                    if event == "stop-coordinator":
                        proc.terminate()  # drains: calls in flight are answered
                        proc.wait(timeout=30)
                    else:
                        cluster.kill("coordinator")
                    cluster.start_coordinator(extra=list(extra_coordinator), port=coord_port)
                    result.events.append((at, event))
            if queue is None:  # the load goes on to the end
                _wait(lambda: False, t0 + seconds)
            else:  # ...or until every restarted worker has answered again

                def reused() -> bool:
                    with lock:
                        return all(any(t >= at and b in br for t, br in served) for _, b, at in restarts)

                _wait(reused, t0 + seconds)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=client_timeout_s + 5)
    for name, b, serving_at in restarts:
        used = [t for t, branches in served if t >= serving_at and b in branches]
        result.reuse_s[name] = round(min(used) - serving_at, 2) if used else None
    return result


class Impostor(grpc.GenericRpcHandler):
    """A process on a worker's port that does not hold the key: it says SERVING, and keeps
    every call's method and metadata (``seen``). ``how`` it meets the challenge: ``noise``
    (random bytes), ``relay`` (passes it to the real server at ``relay_to`` and returns its
    answer), or ``keyless`` (no such method, as a server started without a key)."""

    def __init__(self, how: str = "noise", relay_to: str | None = None) -> None:
        self.how, self.relay_to = how, relay_to
        self.seen: list[tuple[str, dict]] = []

    @property
    def proofs(self) -> int:
        """Calls that carried a proof of the key."""
        return sum(AUTH_HEADER in md for _, md in self.seen)

    def _challenge(self, request: bytes, context) -> bytes:
        if self.how == "noise":
            return os.urandom(80)
        with grpc.insecure_channel(self.relay_to) as ch:
            return ch.unary_unary("/distree.Auth/Challenge")(request, timeout=5)

    def service(self, details):
        from grpc_health.v1 import health_pb2

        self.seen.append((details.method, dict(details.invocation_metadata)))
        if details.method == "/grpc.health.v1.Health/Check":
            serving = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
            return grpc.unary_unary_rpc_method_handler(
                lambda request, context: serving,
                request_deserializer=health_pb2.HealthCheckRequest.FromString,
                response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
            )
        if details.method == "/distree.Auth/Challenge" and self.how != "keyless":
            return grpc.unary_unary_rpc_method_handler(self._challenge)
        return None  # UNIMPLEMENTED


def _impostor(port: int, seconds: float) -> int:
    """Serve as an impostor on ``port`` for ``seconds``; the proofs it received."""
    from concurrent import futures

    impostor = Impostor()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((impostor,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    time.sleep(seconds)
    server.stop(None)
    return impostor.proofs


def _abandon(coord: str, images: torch.Tensor) -> int:
    """Send 4,096 inputs in one call and give up after 0.1 s; 1 if it was given up (a
    model fast enough answers first)."""
    many = images.repeat(4096 // len(images) + 1, 1, 1, 1)[:4096]
    with DistreeClient(coord, token=KEY, timeout_s=30) as c:
        c.model_info()
        c.timeout_s = 0.1
        try:
            c.infer(many)
        except InferenceError as err:
            return int(err.code == grpc.StatusCode.DEADLINE_EXCEEDED)
    return 0


def _busy(seconds: float) -> None:
    """A neighbour process that keeps one core busy for ``seconds``."""
    import subprocess
    import sys

    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"
    subprocess.run([sys.executable, "-c", code], check=True)


def _idle_connections(address: str, count: int, seconds: float) -> None:
    """Hold ``count`` silent TCP connections to ``address`` for ``seconds``."""
    import socket

    host, port = address.rsplit(":", 1)
    held = []
    try:
        for _ in range(count):
            try:
                held.append(socket.create_connection((host, int(port)), timeout=1))
            except OSError:
                break  # refused beyond the server's limit: what the limit is for
        time.sleep(seconds)
    finally:
        for s in held:
            s.close()


def model_expectations(run_dir: str | Path, images: torch.Tensor) -> Callable[[int, int, list[int]], tuple[int, float]]:
    """``expected`` for ``run_soak``: the run's student offline (``inference.records``) on
    ``images``, every subset of branches fused at every exit."""
    from itertools import combinations

    from distree.inference.records import branch_vectors, fuse_exits
    from distree.run import RunDir

    run = RunDir(run_dir)
    student = run.load_student()
    vectors = branch_vectors(student, images, run.meta.data.normalization, 256, torch.device("cpu"))
    n = student.num_branches
    table = {}
    for k in range(1, n + 1):
        for subset in combinations(range(n), k):
            probs = fuse_exits(student, vectors, subset).logits.softmax(-1)  # (E, N, K)
            top = probs.topk(2, dim=-1)
            table[subset] = (top.indices[..., 0], top.values[..., 0] - top.values[..., 1])

    def expected(index: int, exit_: int, branches: list[int]) -> tuple[int, float]:
        classes, lead = table[tuple(sorted(branches))]
        return int(classes[exit_, index]), float(lead[exit_, index])

    return expected


def _wait(done, deadline: float) -> None:
    """Poll ``done`` until it holds or the monotonic clock passes ``deadline``."""
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)


def cluster_branches(run_dir: str | Path) -> list:
    """The branches of a run's student (one worker each)."""
    from distree.run import RunDir

    return RunDir(run_dir).meta.config.student.branches
