"""``distree record``, ``simulate``, ``sweep`` and ``report``: the edge-cluster simulator."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from distree.cli.args import COUNT, NON_NEGATIVE, shipped, write_json
from distree.cli.args import log as _log
from distree.defaults import SWEEP_PARAMS

DEFAULT_SCENARIO = "scenarios/four-boards-wifi.yaml"


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def _run(args: argparse.Namespace):
    from distree.run import RunDir

    return RunDir(args.run_dir)


def _model(args: argparse.Namespace):
    from distree.hardware import pick_device
    from distree.simulation.engine import load_model

    return load_model(_run(args), args.data, pick_device(args.device), log=_log)


def cmd_record(args: argparse.Namespace) -> int:
    """Record the run's outputs on the test split for the simulator."""
    from distree.hardware import pick_device
    from distree.simulation.trace import TRACE_FILE, record_trace

    t0 = time.perf_counter()
    run = _run(args)
    trace = record_trace(run, args.data, pick_device(args.device), args.max_drop, log=_log)
    _log(f"recorded {trace.meta.samples} samples in {time.perf_counter() - t0:.0f}s: {run.path / TRACE_FILE}")
    return 0


def _scenario(path: str, requests: int | None, mode: str | None = None):
    from distree.simulation.scenario import load_scenario

    sc = load_scenario(path)
    if requests is not None:  # at least 1: the parser checks
        sc = sc.model_copy(update={"requests": requests})
    return sc if mode is None else sc.model_copy(update={"mode": mode})


def cmd_simulate(args: argparse.Namespace) -> int:
    """Simulate every system of a scenario and print the table."""
    from distree.simulation.engine import format_results, simulate

    scenario = _scenario(args.scenario, args.requests, args.mode)
    model = _model(args)
    t0 = time.perf_counter()
    report = simulate(scenario, model, args.systems.split(",") if args.systems else None, log=_log)
    report["wall_s"] = round(time.perf_counter() - t0, 2)
    print(format_results(report))
    _log(f"simulated in {report['wall_s']}s")
    if args.json:
        write_json(args.json, report, args)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Simulate a scenario over values of one parameter; write CSV."""
    from distree.simulation.sweep import sweep, write_csv

    scenario = _scenario(args.scenario, args.requests, args.mode)
    rows = sweep(
        scenario, _model(args), args.param, args.values, args.systems.split(",") if args.systems else None, _log
    )
    write_csv(rows, Path(args.csv))
    _log(f"{len(rows)} rows: {args.csv}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the Markdown report with its plots."""
    from distree.simulation.report import write_report

    scenarios = [_scenario(s, args.requests) for s in (args.scenario or [shipped(DEFAULT_SCENARIO)])]
    path = write_report(_run(args), _model(args), scenarios, Path(args.out), log=_log)
    _log(f"report: {path}")
    return 0


def add_simulation_commands(sub, add_data_args) -> None:
    """Register record, simulate, sweep and report."""
    p = sub.add_parser("record", help="record the run's outputs on the test split for the simulator")
    p.add_argument("run_dir", help="run directory made by 'distree train'")
    add_data_args(p)
    p.add_argument(
        "--max-drop", type=NON_NEGATIVE, default=0.5, help="accuracy drop (points) the single-device baseline may lose"
    )
    p.set_defaults(func=cmd_record)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("run_dir", help="run directory made by 'distree train'")
        add_data_args(p)
        p.add_argument("--requests", type=COUNT, help="override the scenario's number of requests")
        p.add_argument("--systems", help="comma-separated systems (default: all the scenario compares)")
        p.add_argument("--mode", choices=["lockstep", "eager"], help="override the scenario's runtime mode")

    p = sub.add_parser("simulate", help="simulate a scenario: every system, one table")
    p.add_argument("scenario", help="scenario YAML file (see scenarios/)")
    common(p)
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("sweep", help="simulate a scenario over values of one parameter, to CSV")
    p.add_argument("scenario", help="scenario file (YAML; see scenarios/)")
    common(p)
    p.add_argument("--param", required=True, choices=SWEEP_PARAMS, help="the scenario parameter to vary")
    p.add_argument("--values", required=True, type=_floats, help="comma-separated values")
    p.add_argument("--csv", required=True, help="output CSV file")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="Markdown report with plots from the simulator")
    p.add_argument("run_dir", help="run directory made by 'distree train'")
    add_data_args(p)
    p.add_argument("--scenario", action="append", help=f"scenario file, repeatable (default {DEFAULT_SCENARIO})")
    p.add_argument("--requests", type=COUNT, help="override each scenario's number of requests")
    p.add_argument("--out", required=True, help="directory for report.md and the PNG plots")
    p.set_defaults(func=cmd_report)
