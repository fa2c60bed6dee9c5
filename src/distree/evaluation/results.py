"""What ``distree eval`` measures, as typed records (eval.json is their JSON form), and the
tables made from them.

Each table is built once from the records, as a header and rows of cells; the command
prints them as aligned text and the tables of README.md and docs/results.md
(``bench/tools/results_table.py``) are the same rows as Markdown, with a data-set column in
front when several runs share a table.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_serializer

from distree.policies import policy_class
from distree.policies.calibration_file import CalibrationTarget, PolicyCalibration
from distree.provenance import Provenance
from distree.tables import render

Table = tuple[list[str], list[list[str]]]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Measured(_Record):
    """Accuracy and computation (MACs per sample) of one way to run the model."""

    accuracy: float
    macs_per_sample: int


class AtTarget(_Record):
    """A policy calibrated on validation for one drop target, measured on test."""

    drop_pp: float
    saving: float
    saving_by_exit: list[float]
    bound_pp: float | None  # the calibration's upper confidence bound on the drop
    met: bool  # whether calibration could meet the target on validation


class PolicyResult(_Record):
    """One policy at its calibrated thresholds on the test split.

    ``saving_by_exit[e]`` is the part of the saving produced by the inputs that stopped at
    exit e; ``auroc[e]`` how well the policy's score at exit e (all but the last) tells a
    right prediction from a wrong one (0.5: no signal; None: every prediction right, or
    every one wrong). ``calibration`` and ``at_targets`` only for calibrated policies.
    """

    accuracy: float
    drop_pp: float  # against full execution, percentage points
    macs_per_sample: int
    saving: float  # of full execution's MACs
    saving_by_exit: list[float]
    exit_histogram: list[int]
    auroc: list[float | None]
    calibration: PolicyCalibration | None = None
    at_targets: dict[str, AtTarget] | None = None

    @model_serializer(mode="wrap")
    def _without_absent(self, handler):
        # A policy that is not calibrated has no calibration entries at all in eval.json.
        out = handler(self)
        for key in ("calibration", "at_targets"):
            if out.get(key) is None:
                out.pop(key, None)
        return out


class PresentResult(_Record):
    """Mean over the k-subsets of branches of a policy at its thresholds for k present."""

    accuracy: float
    drop_pp: float  # against full execution with the same branches
    saving: float


class ScheduleResult(_Record):
    """A policy over a schedule of (exit, devices awake) steps, calibrated on validation and
    measured on test (``measures.device_schedules``)."""

    policy: str
    schedule: str  # exit:awake per step
    thresholds: list[float | None]  # per step but the last; None: never stops there
    validation_saving: float
    accuracy: float
    drop_pp: float  # against full execution
    saving: float
    answered_by_devices: dict[str, float]  # devices awake -> share of the inputs answered
    device_busy: list[float]  # per device: MACs it ran over what it runs under full execution


class AwakeResult(_Record):
    """Every exit with k devices awake: accuracy and calibration error (ECE, 15 bins)."""

    accuracy: list[float]
    calibration_error: list[float]


class Curves(_Record):
    """Where the accuracy-vs-computation sweep was written."""

    csv: str
    png: str


class RunResult(_Record):
    """The teacher, every exit, full execution and full execution with k of N branches."""

    run: str
    test_samples: int
    macs_note: str
    teacher: Measured
    exits: list[Measured]  # cumulative: every branch's stages up to the exit, every head on the way
    full: Measured
    devices_present: dict[str, float]  # k -> full-execution accuracy, mean over the k-subsets
    devices_present_subsets: dict[str, dict[str, float]]  # k -> "i,j,..." -> accuracy
    stage_macs: list[list[int]]  # [branch][stage]
    head_macs: list[int]  # [exit]
    #: What ran the branches: torch, or an export under onnxruntime ("onnxruntime fp32",
    #: "onnxruntime int8"; the heads are fp32 torch in every case).
    backend: str = "torch"
    #: k -> every exit with the first k devices of each input's wake order awake
    #: (``measures.awake_table``); absent in files written before it was measured.
    devices_awake: dict[str, AwakeResult] | None = None


class PolicyResults(_Record):
    """Every policy at its calibrated point, and with k of N branches present."""

    target: CalibrationTarget
    calibration_saved: bool  # False: fitted in memory for this evaluation only
    policies: dict[str, PolicyResult]
    branches_present: dict[str, dict[str, PresentResult]]  # policy -> k -> result
    curves: Curves | None
    #: The default policy over depth only and over depth and devices ("depth",
    #: "depth-and-devices"), at the drop target; absent for a budget target and in files
    #: written before it was measured.
    depth_and_devices: dict[str, ScheduleResult] | None = None


class EvalResult(PolicyResults, RunResult):  # RunResult's fields come first
    """Contents of eval.json."""

    provenance: Provenance | None = None  # what made it (absent in files written before it was recorded)

    @model_serializer(mode="wrap")
    def _without_absent(self, handler):
        out = handler(self)
        for key in ("provenance", "depth_and_devices", "devices_awake"):
            if out.get(key) is None:
                out.pop(key, None)
        return out


def _pct(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}%}"


def _m(macs: float) -> str:
    return f"{macs / 1e6:.2f} M"


def exits_table(r: RunResult) -> Table:
    """The teacher, full execution and each exit: accuracy and cumulative MACs."""
    full = r.full.macs_per_sample
    rows = [
        ["teacher (one device)", _pct(r.teacher.accuracy), _m(r.teacher.macs_per_sample), ""],
        ["student, full execution", _pct(r.full.accuracy), _m(full), "100%"],
        *(
            [f"exit {e}", _pct(x.accuracy), _m(x.macs_per_sample), f"{x.macs_per_sample / full:.0%}"]
            for e, x in enumerate(r.exits)
        ),
    ]
    return ["", "test accuracy", "MACs / sample", "of full"], rows


def present_table(r: RunResult) -> Table:
    """Full execution with k of N branches present (mean over the k-subsets)."""
    n = len(r.devices_present)
    rows = [[f"{k} of {n}", _pct(acc)] for k, acc in r.devices_present.items()]
    return ["branches present", "full-execution accuracy"], rows


def policies_table(r: EvalResult) -> Table:
    """Every policy at its calibrated point on the test split."""
    rows = []
    for name, p in r.policies.items():
        policy = policy_class(name)
        # Full execution decides nothing on the way, the oracle's score is the label: no AUROC.
        has_signal = policy.reads_exits and not policy.needs_labels
        auroc = " ".join("-" if a is None else f"{a:.2f}" for a in p.auroc) if has_signal else ""
        met = "" if p.calibration is None else "yes" if p.calibration.met else "no"
        rows.append(
            [
                name,
                policy.criterion,
                _pct(p.accuracy),
                f"{p.drop_pp:.2f}",
                _m(p.macs_per_sample),
                _pct(p.saving, 1),
                " ".join(map(str, p.exit_histogram)),
                auroc,
                met,
            ]
        )
    headers = [
        "policy",
        "criterion",
        "test accuracy",
        "drop (pp)",
        "MACs / sample",
        "saving",
        "inputs per exit",
        "AUROC per exit",
        "target met",
    ]
    return headers, rows


def targets_table(r: EvalResult) -> Table:
    """Each calibrated policy fitted for each reported target: test drop and saving, and the
    part of the saving each exit produced at the first target."""
    calibrated = {n: p.at_targets for n, p in r.policies.items() if p.at_targets}
    targets = list(next(iter(calibrated.values()), {}))
    rows = [
        [
            name,
            *(f"{v.drop_pp:.2f} / {_pct(v.saving, 1)}" for v in at.values()),
            " ".join(_pct(x, 1) for x in at[targets[0]].saving_by_exit),
        ]
        for name, at in calibrated.items()
    ]
    first = targets[0] if targets else ""
    return ["policy", *(f"{t} pp: drop / saving" for t in targets), f"saving by exit ({first} pp)"], rows


def by_present_table(r: EvalResult) -> Table:
    """Each policy at its thresholds for k branches present: drop and saving, mean over the
    k-subsets."""
    counts = sorted(next(iter(r.branches_present.values())), key=int, reverse=True)
    rows = [
        [name, *(f"{by_k[k].drop_pp:.2f} / {_pct(by_k[k].saving, 1)}" for k in counts)]
        for name, by_k in r.branches_present.items()
    ]
    return ["policy", *(f"{k} present: drop / saving" for k in counts)], rows


def schedules_table(r: EvalResult) -> Table:
    """The default policy waking every device, and waking devices on demand."""
    rows = [
        [
            name,
            v.schedule,
            f"{v.drop_pp:.2f}",
            _pct(v.saving, 1),
            " ".join(f"{k}: {_pct(x, 1)}" for k, x in v.answered_by_devices.items() if x),
            " ".join(_pct(b, 0) for b in v.device_busy),
        ]
        for name, v in (r.depth_and_devices or {}).items()
    ]
    headers = ["over", "schedule (exit:awake)", "drop (pp)", "saving", "answered with k devices", "device busy"]
    return headers, rows


def columns(table: Table, names: list[str]) -> Table:
    """Only the columns called ``names``, in that order."""
    headers, rows = table
    idx = [headers.index(n) for n in names]
    return names, [[row[i] for i in idx] for row in rows]


def labelled(tables: dict[str, Table], label: str = "data set") -> Table:
    """Several runs' tables of one kind as one, with the run's name in a first column."""
    headers = [label, *next(iter(tables.values()))[0]]
    return headers, [[name, *row] for name, (_, rows) in tables.items() for row in rows]


def _target_text(t: CalibrationTarget) -> str:
    if t.max_drop_pp is not None:
        margin = f" at {t.confidence:.0%} confidence" if t.confidence else ", no margin"
        return f"max drop {t.max_drop_pp} pp{margin}"
    return f"budget {t.budget:.0%}"


def awake_table(r: RunResult) -> Table:
    """Each exit's accuracy and calibration error with k devices awake."""
    rows = [
        [
            f"{k} of {len(r.devices_awake or {})}",
            *(f"{_pct(a, 1)} / {e:.3f}" for a, e in zip(v.accuracy, v.calibration_error)),
        ]
        for k, v in (r.devices_awake or {}).items()
    ]
    return ["devices awake", *(f"exit {e}: accuracy / ECE" for e in range(len(r.exits)))], rows


def format_run(r: RunResult) -> str:
    """What ``distree eval`` prints first: the exits and the branches-present table."""
    lines = [f"test samples: {r.test_samples}   branches run by: {r.backend}   (computation: MACs per sample)"]
    for table in (exits_table(r), present_table(r)):
        lines += ["", *render(*table)]
    if r.devices_awake:
        lines += ["", "the first k devices of each input's wake order (inputs starting on the devices in turn):"]
        lines += render(*awake_table(r))
    return "\n".join(lines)


def format_policies(r: EvalResult) -> str:
    """What ``distree eval`` prints after the policies are measured."""
    fitted = "fitted on the validation split"
    if r.backend != "torch":
        fitted += " now, on this backend's vectors"
    elif not r.calibration_saved:
        fitted += " now, not saved: run distree calibrate"
    lines = [
        "",
        f"policies at their calibrated point ({_target_text(r.target)}, {fitted}), test split;",
        "AUROC: how well each exit's score tells a right prediction from a wrong one (0.5: no signal)",
        *render(*policies_table(r)),
        "",
        "calibrated for each target on validation, measured on test (drop pp / saving):",
        *render(*targets_table(r)),
        "",
        "k branches present, each policy at its thresholds for k (mean over the k-subsets), test split:",
        *render(*by_present_table(r)),
        "",
    ]
    if r.depth_and_devices:
        policy = next(iter(r.depth_and_devices.values())).policy
        lines += [
            f"{policy} waking every device, and waking devices on demand (the schedule chosen and "
            f"calibrated on validation, inputs starting on the devices in turn), test split:",
            *render(*schedules_table(r)),
            "",
        ]
    if r.curves is None:
        lines.append("curves: not written (--out-dir DIR, or --json FILE to write them beside it)")
    else:
        lines.append(f"curves: {r.curves.csv}, {r.curves.png}")
    return "\n".join(lines)
