"""A chaos soak: load from several clients while workers and the coordinator are killed,
paused and restarted at random, counting what became of every call.

Every call must end with its answers or an explicit error: a call that got neither
within the client's timeout is *lost*, a call with more answers than inputs is
*duplicated*; both must be 0. For every restarted worker it also measures the time from
the worker saying SERVING to the first answer that fused its branch (its re-use time).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import torch

from distree.launch.local import LocalCluster
from distree.runtime.client import DistreeClient, InferenceError

#: Scripted soaks: answers that must arrive between two events, so each meets a serving cluster.
SETTLE_ANSWERS = 20
EVENTS = ("kill-worker", "pause-worker", "stop-coordinator", "kill-coordinator")


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
    events: list[tuple[float, str]] = field(default_factory=list)
    reuse_s: dict[str, float | None] = field(default_factory=dict)  # restart -> seconds to first use

    def to_json(self) -> dict:
        """JSON-ready."""
        return {**self.__dict__, "errors": dict(self.errors)}


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
) -> SoakResult:
    """Run the soak on a local cluster of real processes (loopback); see the module doc.
    ``script`` replaces the random events by these (names from ``EVENTS``), each once the
    load has been answered again since the one before; the soak then ends as soon as every
    restarted worker has served again, ``seconds`` being only the most it waits for that."""
    rng = random.Random(seed)
    result = SoakResult()
    lock = threading.Lock()
    stop = threading.Event()
    served: list[tuple[float, list[int]]] = []  # (time, branches) of every answer

    with LocalCluster(run_dir, log_dir=log_dir) as cluster:
        n = len(cluster_branches(run_dir))
        workers = cluster.start_workers(n)
        ports = {b: int(a.rsplit(":", 1)[1]) for b, a in enumerate(workers)}
        coord = cluster.start_coordinator(extra=list(extra_coordinator))
        coord_port = int(coord.rsplit(":", 1)[1])

        def client(k: int) -> None:
            crng = random.Random(seed * 1000 + k)
            with DistreeClient(coord, timeout_s=client_timeout_s) as c:
                while not stop.is_set():
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
                        result.calls += 1
                        result.inputs += size
                        if outcome == "ok":
                            result.answered += len(answers)
                            result.duplicated += len(answers) > size
                            result.fewer_branches += sum(len(a.branches) < n for a in answers)
                            served.extend((now, a.branches) for a in answers)
                        elif outcome == grpc.StatusCode.DEADLINE_EXCEEDED.name:
                            result.lost += 1  # no answer and no error within the timeout
                        else:
                            result.errors[outcome] += 1
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
                event = queue.pop(0) if queue is not None else rng.choice(EVENTS)
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


def _wait(done, deadline: float) -> None:
    """Poll ``done`` until it holds or the monotonic clock passes ``deadline``."""
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)


def cluster_branches(run_dir: str | Path) -> list:
    """The branches of a run's student (one worker each)."""
    from distree.run import RunDir

    return RunDir(run_dir).meta.config.student.branches
