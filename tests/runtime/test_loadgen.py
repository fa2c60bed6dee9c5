"""The load generator on a stand-in client: failed calls cost only their own inputs."""

import grpc
import torch

from distree.answer import Answer
from distree.runtime.client import InferenceError
from distree.runtime.loadgen import send


class _FlakyClient:
    """Answers every call but those starting at the given inputs (label = input index)."""

    def __init__(self, failing: set[int]):
        self.failing = failing

    def infer(self, images, deadline_ms=0.0):
        start = int(images[0, 0, 0, 0])
        if start in self.failing:
            raise InferenceError(grpc.StatusCode.UNAVAILABLE, "coordinator went away")
        return [
            Answer(
                prediction=int(x[0, 0, 0]),
                probabilities=[],
                exit=0,
                branches=[0],
                stage_ms=[1.0],
                stop_reason="policy",
                worker_ms=[0.5],
                macs=10,
            )
            for x in images
        ]


def test_answers_before_and_after_a_failed_call_are_kept():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    labels = torch.arange(10)
    requests, _ = send(_FlakyClient({4}), images, labels, batch=2)
    assert [r["label"] for r in requests] == list(range(10))
    assert [r.get("prediction") for r in requests] == [0, 1, 2, 3, None, None, 6, 7, 8, 9]
    assert {r["error"] for r in requests if "error" in r} == {"UNAVAILABLE: coordinator went away"}


def test_the_summary_counts_answers_by_exit_and_by_devices_fused():
    from types import SimpleNamespace

    from distree.runtime.loadgen import format_infer, summarize

    info = SimpleNamespace(
        num_exits=3, num_branches=4, policy="max-prob", mode="lockstep", full_macs=100, schedule="0:2 1:2 1:4 2:4"
    )
    requests = [
        {"label": 1, "prediction": 1, "exit": 0, "branches": [0, 1], "macs": 20, "latency_ms": 5.0},
        {"label": 2, "prediction": 0, "exit": 2, "branches": [0, 1, 2, 3], "macs": 100, "latency_ms": 9.0},
        {"label": 3, "error": "UNAVAILABLE: gone"},
    ]
    r = summarize(info, requests, 1.0)
    assert r["exit_histogram"] == [1, 0, 1] and r["devices_histogram"] == [0, 1, 0, 1]
    assert r["saving"] == 0.4 and r["failed"] == 1
    assert "answered by 1..4 devices [0, 1, 0, 1]" in format_infer(r)
    assert "(lockstep, schedule 0:2 1:2 1:4 2:4)" in format_infer(r)
    assert "schedule" not in format_infer(summarize(SimpleNamespace(**{**vars(info), "schedule": ""}), requests, 1.0))
