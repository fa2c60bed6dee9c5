"""``distree cluster check``: a cluster file's workers checked before traffic starts."""

from __future__ import annotations

import argparse
import dataclasses

from distree.cli.args import POSITIVE, write_json


def _same_branches(workers: int, branches: int, model) -> None:
    if workers != branches:
        raise ValueError(f"the cluster file gives {workers} workers; {model} has {branches} branches, one per worker")


def cmd_cluster_check(args: argparse.Namespace) -> int:
    """One row per worker; exit 1 when any check fails, naming the worker and why."""
    from distree.runtime.cluster import check_cluster, load_cluster
    from distree.runtime.security import TLSFiles, resolve_token
    from distree.tables import render

    cluster = load_cluster(args.file)
    expected = None
    if not args.skip_weights and cluster.coordinator.backend == "onnxruntime":
        from distree.export.manifest import read_manifest  # an export's manifest: no torch

        fingerprints = read_manifest(cluster.served).branch_fingerprints
        _same_branches(len(cluster.workers), len(fingerprints), cluster.served)
        expected = fingerprints.__getitem__
    elif not args.skip_weights:
        from distree.run import RunDir  # reads the run's weights: needs distree[torch]

        run = RunDir(cluster.served)
        _same_branches(len(cluster.workers), len(run.meta.config.student.branches), cluster.served)
        expected = run.branch_fingerprint
    tls = cluster.worker_tls.files() if cluster.worker_tls else TLSFiles()
    rows = check_cluster(cluster, expected, resolve_token(None, cluster.token_file), tls, args.timeout_s)

    def yes(v: bool | None) -> str:
        return "-" if v is None else ("yes" if v else "NO")

    table = [
        [
            r.name,
            r.address,
            str(r.branch) if r.reported_branch in (None, r.branch) else f"{r.reported_branch} (want {r.branch})",
            yes(r.reachable),
            yes(r.serving) if r.reachable else "-",
            yes(r.weights_match),
            r.backend or "-",
            f"{r.rtt_ms:.2f}" if r.rtt_ms is not None else "-",
            f"{r.peak_rss_mib:.0f}" if r.peak_rss_mib else "-",
            "ok" if r.ok else "; ".join(r.problems),
        ]
        for r in rows
    ]
    headers = ["worker", "address", "branch", "reachable", "serving", "weights", "backend", "rtt ms", "MiB", "check"]
    print("\n".join(render(headers, table)))
    failed = [r for r in rows if not r.ok]
    print(
        f"{len(rows) - len(failed)} of {len(rows)} workers pass"
        + (f"; failing: {', '.join(r.name for r in failed)}" if failed else "")
    )
    if args.json:
        write_json(args.json, {"workers": [dataclasses.asdict(r) | {"ok": r.ok} for r in rows]}, args)
    return 1 if failed else 0


def add_cluster_commands(sub) -> None:
    """Register ``cluster check``."""
    p = sub.add_parser("cluster", help="a cluster file's devices: check them before traffic starts")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    c = verbs.add_parser(
        "check",
        help="ask every worker in FILE whether it is reachable, serving, on its branch and on the run's weights "
        "(exit 0 all pass, 1 any fails)",
    )
    c.add_argument("file", help="the cluster file (YAML)")
    c.add_argument("--timeout-s", type=POSITIVE, default=3.0, help="per call to each worker (default 3)")
    c.add_argument(
        "--skip-weights",
        action="store_true",
        help="do not compare the workers' weights with the run directory's (which needs torch to read; an "
        "export's fingerprints are read from its manifest)",
    )
    c.add_argument("--json", help="write one record per worker to this file")
    c.set_defaults(func=cmd_cluster_check)
