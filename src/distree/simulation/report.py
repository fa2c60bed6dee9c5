"""``distree report``: the simulator's trade-offs as Markdown with PNG plots."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from distree.evaluation.measures import sweep_policy
from distree.inference.records import fuse_exits
from distree.run import RunDir
from distree.simulation.engine import Model, SystemRun, result_cells, simulate
from distree.simulation.scenario import Scenario
from distree.simulation.sweep import sweep
from distree.tables import render

BANDWIDTHS_MBPS = (2.5, 5, 10, 20, 40, 80, 160)


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def _table(report: dict) -> list[str]:
    cols = ("accuracy", "MMACs", "mean", "p50", "p95", "p99", "deadline", "failed", "capacity")
    headers = (
        "system",
        "accuracy",
        "MMACs/sample",
        "mean ms",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "deadline hit",
        "failed",
        "capacity/s",
    )
    return render(headers, [[name, *(result_cells(r)[c] for c in cols)] for name, r in report["results"].items()], True)


def plot_accuracy_vs_macs(model: Model, report: dict, path: Path) -> str:
    """Each policy's threshold sweep on the recorded samples, with the simulated systems as points."""
    student = model.tables.student
    rec = fuse_exits(student, model.trace.vectors)
    labels = model.trace.labels
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy in model.calibrated_policies():
        # Thresholds from score quantiles of the same samples: this draws the trade-off
        # curve; it tunes nothing (calibration uses the validation split).
        rows = sweep_policy(student, policy, rec, labels, rec, labels)
        ax.plot(
            [r["macs_per_sample"] / 1e6 for r in rows],
            [100 * r["accuracy"] for r in rows],
            label=f"{policy}: threshold sweep",
            lw=1.2,
        )
    # Systems sit close together (full execution and patience, the teacher and the
    # pipeline): one marker each, named in the legend rather than next to the point.
    markers = "osD^vPX*<>"
    for i, (name, r) in enumerate(report["results"].items()):
        ax.scatter(
            r["macs_per_sample"] / 1e6,
            100 * r["accuracy"],
            marker=markers[i % len(markers)],
            facecolors="none",
            edgecolors="black",
            s=45,
            zorder=3,
            label=name,
        )
    ax.set_xlabel("MMACs per sample (all devices)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Accuracy vs computation ({report['scenario']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    return _save(fig, path)


def plot_latency_cdfs(latencies: dict[str, list[float]], title: str, path: Path) -> str:
    """Empirical CDF of answered requests' latency, one line per system."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, values in latencies.items():
        if values:
            v = np.sort(np.asarray(values) * 1000)
            ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=name, lw=1.2)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_exits(report: dict, path: Path) -> str:
    """Share of requests leaving at each exit, per early-exit system."""
    systems = {k: r["exit_histogram"] for k, r in report["results"].items() if "exit_histogram" in r}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / max(1, len(systems))
    for i, (name, hist) in enumerate(systems.items()):
        h = np.asarray(hist, dtype=float)
        ax.bar(np.arange(len(h)) + i * width, h / max(1.0, h.sum()), width, label=name)
    ax.set_xlabel("exit (0 = first)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"Exits per stage ({report['scenario']})")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_sweep(
    rows: list[dict],
    column: str,
    xlabel: str,
    ylabel: str,
    title: str,
    path: Path,
    logx: bool = False,
    logy: bool = False,
) -> str:
    """One line per system of ``column`` against the swept value."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system in dict.fromkeys(r["system"] for r in rows):
        pts = [(r["value"], r[column]) for r in rows if r["system"] == system and r[column] is not None]
        if pts:
            x, y = zip(*pts, strict=True)
            y = [100 * v for v in y] if column == "accuracy" else y
            ax.plot(x, y, marker="o", ms=3, label=system, lw=1.2)
    if logx:
        ax.set_xscale("log")
    if logy:
        # A system whose link saturates has an unbounded queue: only a log axis shows both.
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_report(
    run: RunDir,
    model: Model,
    scenarios: Sequence[Scenario],
    out: Path,
    log: Callable[[str], None] = print,
) -> Path:
    """Simulate ``scenarios`` and write out/report.md with its plots; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    main = scenarios[0]
    lines = [f"# distree simulation report: {run.path.name}", ""]
    lines += [
        f"Model: `{run.path}`; {model.trace.meta.samples} recorded test samples from `{model.trace.meta.source}`.",
        "Every simulated request answers with the model's recorded outputs for its sample, so",
        "accuracy is the model's real accuracy on the samples the requests drew. capacity/s is the",
        "request rate at which the busiest device or link would be busy all the time, at the busy",
        "time per request of the run (the utilisation law): the throughput at saturation.",
        "",
    ]
    log(f"simulating {main.name}")
    runs: dict[str, SystemRun] = {}
    main_report = simulate(main, model, keep=runs)
    for scenario in scenarios:
        report = main_report if scenario is main else simulate(scenario, model)
        lines += [f"## Scenario `{scenario.name}`", "", scenario.description, ""]
        lines += [f"{scenario.mode} mode, {scenario.requests} requests, {len(scenario.devices)} devices.", ""]
        lines += [*_table(report), ""]

    lines += ["## Plots", f"For scenario `{main.name}`.", ""]
    plots = [
        ("Accuracy vs computation", plot_accuracy_vs_macs(model, main_report, out / "accuracy_vs_macs.png")),
        (
            "Latency CDF per system",
            plot_latency_cdfs(
                {s: [d.latency_s for d in r.done if d.latency_s is not None] for s, r in runs.items()},
                f"Latency CDF ({main.name})",
                out / "latency_cdf.png",
            ),
        ),
        ("Exits per stage", plot_exits(main_report, out / "exits_per_stage.png")),
    ]
    log("sweeping the number of devices")
    rows = sweep(main, model, "devices", list(range(1, len(main.devices) + 1)))
    plots.append(
        (
            "Accuracy vs number of devices present",
            plot_sweep(
                rows,
                "accuracy",
                "devices present",
                "accuracy (%)",
                f"Accuracy vs devices ({main.name})",
                out / "accuracy_vs_devices.png",
            ),
        )
    )
    log("sweeping the bandwidth")
    rows = sweep(main, model, "bandwidth", list(BANDWIDTHS_MBPS))
    plots.append(
        (
            "Latency vs bandwidth",
            plot_sweep(
                rows,
                "mean_ms",
                "link bandwidth (Mbit/s)",
                "mean latency (ms)",
                f"Latency vs bandwidth ({main.name})",
                out / "latency_vs_bandwidth.png",
                logx=True,
                logy=True,
            ),
        )
    )
    for title, name in plots:
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
