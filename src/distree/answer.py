"""One input's answer, wherever the model ran: ``DistreeClient.infer`` (a cluster) and
``distree.load(RUN).infer`` (a run in this process) both return a list of ``Answer``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Answer:
    """One input's answer."""

    prediction: int  # class index
    probabilities: list[float]  # softmax of the logits at the exit taken
    exit: int
    macs: int  # charged to this input: the stages of the branches that answered, the heads the policy read
    class_name: str = ""  # the prediction's name
    branches: list[int] = field(default_factory=list)  # fused at the exit
    stop_reason: str = ""  # why it stopped there: "policy", "last-exit" or "deadline"
    stage_ms: list[float] = field(default_factory=list)  # a cluster's: wall time of each step at the coordinator
    worker_ms: list[float] = field(default_factory=list)  # a cluster's: the slowest worker's own time per step
    group_id: str = ""  # a cluster's: the group it ran in, as the coordinator's and workers' debug logs name it
    start: int = 0  # the branch its wake order began with (a schedule over depth and devices starts there)

    @property
    def probability(self) -> float:
        """The predicted class's probability."""
        return self.probabilities[self.prediction]
