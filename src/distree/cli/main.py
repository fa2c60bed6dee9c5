"""``distree``: one command with sub-commands."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from distree import __version__
from distree.cli.args import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, DistreeParser, policy_type, write_json
from distree.cli.args import add_data_args as _add_data_args
from distree.cli.args import log as _log
from distree.cli.cluster import add_cluster_commands
from distree.cli.export import add_export_commands
from distree.cli.runtime import add_runtime_commands
from distree.cli.simulation import add_simulation_commands
from distree.defaults import SERVE_DEFAULTS

# Exit statuses (docs/cli.md, "Exit statuses"). 0: done.
#: It ran and failed (a file, a port, a peer), or a target was not met (calibrate).
EXIT_FAILED = 1
#: Bad input, nothing ran: a flag, a path that is not there, or the content of a file it
#: names (config, data, scenario, cluster file).
EXIT_USAGE = 2
#: `distree train --time-limit` stopped before the end: not an error, but not finished either.
EXIT_TIME_LIMIT = 3


def cmd_train(args: argparse.Namespace) -> int:
    """Train teacher and student into --out."""
    from distree.data import load_data
    from distree.training.distributed import from_environment, leave
    from distree.training.loop import TimeLimitReached
    from distree.training.pipeline import train_run
    from distree.training.sizing import fit_to_data, too_few_steps

    # isort: split
    # (after torch, so that a client's install is told it lacks torch, not pydantic)
    from distree.config import load_run_config
    from distree.provenance import provenance

    config = load_run_config(args.config, args.set)
    if args.epochs is not None:
        config = config.with_epochs(args.epochs)
    ranks, device = from_environment(args.device)
    # Under torchrun, rank 0 speaks for all.
    log = _log if ranks.is_main else lambda message: None
    t0 = time.perf_counter()
    splits = load_data(args.data, args.format, config.data.val_fraction, config.data.split_seed)
    if args.limit is not None:
        splits = splits.with_train_limit(args.limit, config.data.split_seed)
    across = f" x {ranks.world} ranks" if ranks.world > 1 else ""
    log(
        f"data: {splits.source} ({splits.format}), {len(splits.train)} train / {len(splits.val)} val / "
        f"{len(splits.test)} test, {splits.image_size}x{splits.image_size}x{splits.in_channels}, "
        f"{splits.num_classes} classes; loaded in {time.perf_counter() - t0:.1f}s; device {device}{across}"
    )
    config, sized = fit_to_data(config, len(splits.train))
    if sized:
        log("sized for the data set (unset in the config): " + "; ".join(sized))
    teacher = Path(args.teacher) if args.teacher else None
    for warning in too_few_steps(config, len(splits.train), teacher_trained=teacher is None):
        log(f"warning: {warning}")
    limit = None if args.time_limit is None else args.time_limit * 60 - (time.perf_counter() - t0)
    try:
        run = train_run(
            Path(args.out),
            splits,
            config,
            device,
            teacher_from=teacher,
            log=log,
            time_limit=limit,
            provenance=provenance(args.argv),
            ranks=ranks,
            teacher_only=args.teacher_only,
        )
    except TimeLimitReached as stop:
        log(f"{stop}. Run the same command again to continue from there.")
        return EXIT_TIME_LIMIT
    finally:
        leave()
    log(f"done in {time.perf_counter() - t0:.0f}s: {run.path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a run on the test split."""
    from distree.evaluation.offline import evaluate
    from distree.evaluation.results import format_policies
    from distree.provenance import provenance

    run, _, splits, device = _open_run(args)
    if args.backend == "torch" and args.export:
        raise ValueError("--export is read by --backend onnxruntime only")
    if args.backend == "onnxruntime" and not args.export:
        raise ValueError("--backend onnxruntime needs --export DIR (made by 'distree export')")
    # Curves go where the user asked for output, never into the run unasked.
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.json).parent if args.json else None
    report = evaluate(
        run,
        splits,
        device,
        out_dir,
        export=Path(args.export) if args.export else None,
        provenance=provenance(args.argv),
        log=lambda text: print(text, flush=True),
    )
    print(format_policies(report))
    if args.json:
        write_json(args.json, report.model_dump(mode="json"), args)
        _log(f"wrote {args.json}")
    return 0


def _open_run(args: argparse.Namespace):
    """The run directory, its metadata, its data splits and the device."""
    from distree.data import load_data
    from distree.hardware import pick_device
    from distree.run import RunDir

    run = RunDir(args.run_dir)
    meta = run.meta
    splits = load_data(args.data, args.format, meta.config.data.val_fraction, meta.config.data.split_seed)
    return run, meta, splits, pick_device(args.device)


def cmd_policies(args: argparse.Namespace) -> int:
    """List the registered exit policies (built-in and plugins) and what each one reads."""
    from distree.config import DEFAULT_POLICY
    from distree.policies import policy_class, policy_names
    from distree.tables import render

    rows = []
    for name in policy_names():
        cls = policy_class(name)
        bare = cls.__new__(cls)  # (its properties read class attributes only)
        uses = [u for u, yes in (("calibrated", bare.calibrated), ("served", bare.servable)) if yes]
        rows.append(
            [name, cls.criterion, ", ".join(uses) or "offline only", "default" if name == DEFAULT_POLICY else ""]
        )
    print("\n".join(render(["policy", "criterion", "use", ""], rows)))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit exit-policy thresholds on the validation split for a QoS target."""
    from distree.evaluation.offline import calibrate_run

    # isort: split
    # (after torch, so that a client's install is told it lacks torch, not pydantic)
    from distree.config import ConfigError

    if not 0 <= args.confidence < 1:
        raise ConfigError(f"--confidence must be in [0, 1), got {args.confidence}")
    run, _, splits, device = _open_run(args)
    policies = [args.policy] if args.policy else None
    from distree.policies.calibration_file import CalibrationTarget

    target = CalibrationTarget(max_drop_pp=args.max_drop, budget=args.budget, confidence=args.confidence or None)
    cal = calibrate_run(run, splits, device, target, policies)
    print(f"calibrated on {cal.samples} validation samples; saved to {run.calibration_file}")
    for name, c in cal.policies.items():
        status = ("ok: " if c.met else "NOT MET: ") + c.message
        bound = "" if c.drop_bound_pp is None else f" (bound {c.drop_bound_pp:.2f} pp)"
        print(
            f"  {name:<23} accuracy {c.accuracy:.2%}  drop {c.drop_pp:.2f} pp{bound}  saving {c.saving:.1%}  {status}"
        )
        for k, f in sorted(c.by_present.items(), reverse=True):
            met = "" if f.met else f"  NOT MET: {f.message}"
            of = f"{k} of {len(c.by_present) + 1} branches present"
            print(f"    {of:<23} drop {f.drop_pp:.2f} pp  saving {f.saving:.1%}{met}")
        if c.depth_and_devices is not None:
            d = c.depth_and_devices
            print(
                f"    {'over depth and devices':<23} drop {d.drop_pp:.2f} pp  saving {d.saving:.1%}  "
                f"schedule {d.schedule} (exit:devices awake)"
            )
    met = [c.met and all(f.met for f in c.by_present.values()) for c in cal.policies.values()]
    return 0 if all(met) else 1


def cmd_quickstart(args: argparse.Namespace) -> int:
    """A short end-to-end run: train on a slice of the data for one epoch, then evaluate."""
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="distree-demo-"))
    common = ["--data", args.data] if args.data else []
    common += ["--format", args.format] if args.format else []
    common += ["--device", args.device] if args.device else []
    train = ["train", *common, "--out", str(out), "--limit", str(args.limit), "--epochs", "1"]
    if args.config:
        train += ["--config", args.config]
    evaluate = ["eval", str(out), *common] + (["--json", args.json] if args.json else [])
    for argv in (train, evaluate):
        _log("$ distree " + " ".join(argv))
        code = run_command([*_plugin_args(args), *argv])
        if code:
            return code
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = DistreeParser(prog="distree", description="Distributed early-exit DNN inference.")
    parser.add_argument("--version", action="version", version=f"distree {__version__}")
    _add_plugin_arg(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a teacher and a DistrEE student")
    _add_data_args(p)
    p.add_argument("--out", required=True, help="run directory to create (or resume)")
    p.add_argument("--config", help="YAML or JSON run configuration (default: built-in defaults)")
    p.add_argument("--epochs", type=COUNT, help="epochs of each phase (overrides the config)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set one config field, e.g. --set student.embed_dim=64 --set data.crop_padding=4 (repeatable; "
        "applied over --config, validated as the file is, recorded in run.json)",
    )
    p.add_argument("--limit", type=COUNT, help="use only this many training samples (quick runs)")
    p.add_argument("--teacher", help="take the trained teacher from this run directory")
    p.add_argument(
        "--teacher-only",
        action="store_true",
        help="stop once the teacher is trained (measure it with bench/training/teacher_accuracy.py); "
        "the same command without it continues with the student",
    )
    p.add_argument(
        "--time-limit",
        type=POSITIVE,
        metavar="MINUTES",
        help=f"stop at the last epoch boundary that fits in MINUTES (exit status {EXIT_TIME_LIMIT}); "
        "the same command run again continues",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run on the test split")
    p.add_argument("run_dir", help="run directory made by 'distree train'")
    _add_data_args(p)
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--out-dir", help="where the curve CSV and PNG go (default: beside --json; neither: no curve files)")
    p.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="what runs the branches: the run's torch weights, or an export under onnxruntime (--export); "
        "the thresholds are then fitted on the export's validation vectors",
    )
    p.add_argument("--export", help="with --backend onnxruntime: the directory 'distree export' wrote")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("calibrate", help="fit exit-policy thresholds on the validation split")
    p.add_argument("run_dir", help="run directory made by 'distree train'")
    _add_data_args(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--max-drop", type=NON_NEGATIVE, help="least computation with at most this accuracy drop (points)"
    )
    target.add_argument("--budget", type=POSITIVE, help="best accuracy within this fraction of full computation")
    p.add_argument("--policy", type=policy_type(calibrated=True), help="calibrate only this policy (default: all)")
    p.add_argument(
        "--confidence",
        type=FRACTION,
        default=0.9,
        help="with --max-drop: the probability that the drop on new data stays within the target "
        "(default 0.9; 0 fits the validation split exactly, with no margin)",
    )
    p.set_defaults(func=cmd_calibrate)
    p = sub.add_parser("policies", help="list the exit policies (built-in and from plugins) and what each reads")
    p.set_defaults(func=cmd_policies)

    p = sub.add_parser("quickstart", help="train on a slice of the data for one epoch, then evaluate")
    _add_data_args(p)
    p.add_argument("--out", help="run directory (default: a new temporary directory)")
    p.add_argument("--config", help="YAML or JSON run configuration")
    p.add_argument("--limit", type=COUNT, default=2000, help="training samples (default 2000)")
    p.add_argument("--json", help="also write the evaluation to this JSON file")
    p.set_defaults(func=cmd_quickstart)

    add_export_commands(sub, _add_data_args)
    add_runtime_commands(sub, _add_data_args)
    add_simulation_commands(sub, _add_data_args)
    add_cluster_commands(sub)
    return parser


def _add_plugin_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this Python module first, so the policies it registers can be chosen by name "
        "(repeatable; also $DISTREE_PLUGINS, comma-separated)",
    )


def _plugin_args(args: argparse.Namespace) -> list[str]:
    return [a for m in args.plugin for a in ("--plugin", m)]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``distree`` command."""
    # Modules named with --plugin are imported first, so that a bad one is reported now;
    # those of $DISTREE_PLUGINS and entry points when a policy is first looked up.
    pre = argparse.ArgumentParser(add_help=False)
    _add_plugin_arg(pre)
    known, _ = pre.parse_known_args(argv)
    if known.plugin:
        from distree.policies import load_plugins

        try:
            load_plugins(known.plugin)
        except ValueError as err:
            print(f"distree: error: {err}", file=sys.stderr)
            return EXIT_USAGE
    return run_command(sys.argv[1:] if argv is None else list(argv))


#: Which install provides a module a command may import (pyproject.toml's extras).
EXTRA_OF = {
    "pydantic": "distree[serve]",
    "yaml": "distree[serve]",
    "prometheus_client": "distree[serve]",
    "array_api_compat": "distree[serve]",
    "torch": "distree[torch]",
    "safetensors": "distree[torch]",
    "scipy": "distree[torch]",
    "tqdm": "distree[torch]",
    "PIL": "distree[images]",
    "matplotlib": "distree[train]",
    "simpy": "distree[sim]",
    "onnxruntime": "distree[onnx]",
    "onnx": "distree[export]",
    "onnxscript": "distree[export]",
    "opentelemetry": "distree[tracing]",
}


def missing_extra(err: ImportError, backend: str | None = None) -> str:
    """One line for a module this install lacks: what it is, and the install that has it.
    ``backend``: the command's ``--backend`` (torch, onnxruntime), whose extra brings
    ``distree[serve]`` too: named instead of it when the backend is missing as well."""
    top = (err.name or "").split(".")[0]
    if EXTRA_OF.get(top) == "distree[serve]" and backend == "unknown":
        return (
            f"this command needs {top}, which is not installed: pip install 'distree[onnx]' to serve an export, "
            "'distree[torch]' to serve a run"
        )
    if EXTRA_OF.get(top) == "distree[serve]" and backend in EXTRA_OF:
        import importlib

        try:
            importlib.import_module(backend)
        except ImportError as also:
            return missing_extra(also)
    if top in EXTRA_OF:
        what = {"PIL": "Pillow", "yaml": "PyYAML"}.get(top, top)
        return f"this command needs {what}, which is not installed: pip install '{EXTRA_OF[top]}'"
    return str(err)  # distree's own messages name what to install


def _backend(args: argparse.Namespace) -> str | None:
    """What runs the model in this command, where the command line says it: its --backend, or
    serve's default when no cluster file can name another."""
    if not hasattr(args, "backend"):
        return None
    if args.backend is None:  # a cluster file names it, unread yet
        return "unknown" if getattr(args, "cluster", None) else SERVE_DEFAULTS.backend
    return args.backend


def run_command(argv: list[str]) -> int:
    """Parse ``argv`` (the words after ``distree``) and run its command, errors turned into
    exit statuses: the one dispatch path of ``main`` and of the steps of ``quickstart``."""
    args = build_parser().parse_args(argv)
    args.argv = ["distree", *argv]  # what results record as their command
    try:
        return args.func(args)
    except ImportError as err:  # an extra this install lacks: say which to install
        print(f"distree {args.command}: error: {missing_extra(err, _backend(args))}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, FileNotFoundError) as err:  # ConfigError, DataError: bad input, nothing ran
        print(f"distree {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, RuntimeError) as err:  # it ran and failed: a file, a port, a peer
        print(f"distree {args.command}: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"distree {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
