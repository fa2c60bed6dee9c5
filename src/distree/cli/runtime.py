"""Sub-commands of the distributed runtime: worker, serve, infer, demo, health."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

from distree.cli.args import COUNT, INDEX, NON_NEGATIVE, PORT, POSITIVE, log, policy_type, shipped, write_json
from distree.defaults import DEFAULT_POLICY, DEMO_POLICIES, SERVE_DEFAULTS

DEFAULT_DEMO_RUN = "models/cifar10"


def _tls_args(p: argparse.ArgumentParser, who: str) -> None:
    p.add_argument("--token", help="shared secret checked on every RPC (visible in ps: prefer --token-file)")
    p.add_argument("--token-file", type=Path, help="file holding the shared secret (default: $DISTREE_TOKEN, if set)")
    p.add_argument("--tls-cert", type=Path, help=f"PEM certificate of this {who}")
    p.add_argument("--tls-key", type=Path, help=f"PEM private key of this {who}")
    p.add_argument("--tls-ca", type=Path, help="PEM CA: verifies peers (mutual TLS on servers)")


def _providers(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one execution provider")
    return names


def _providers_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--providers",
        type=_providers,
        metavar="NAME,...",
        help="--backend onnxruntime: execution providers in order of preference, each one this onnxruntime "
        "has (e.g. CUDAExecutionProvider,CPUExecutionProvider; default CPUExecutionProvider)",
    )


def _service_args(p: argparse.ArgumentParser) -> None:
    """What a long-running server (worker, coordinator) takes: metrics, shutdown, logs."""
    p.add_argument("--metrics-port", type=PORT, help="serve Prometheus metrics on this port")
    p.add_argument(
        "--metrics-addr", help="host the metrics listen on (default: the --listen host, so loopback stays loopback)"
    )
    p.add_argument(
        "--grace-s",
        type=NON_NEGATIVE,
        default=5.0,
        help="on SIGTERM/SIGINT: time calls in flight get to finish (default 5)",
    )
    p.add_argument(
        "--max-connections",
        type=COUNT,
        default=512,
        help="connections held at once; a new one beyond it is refused (keeps a flood of idle connections "
        "from using up the process's open files)",
    )
    p.add_argument(
        "--idle-timeout-s", type=POSITIVE, default=300.0, help="close a connection idle for this long (seconds)"
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="debug adds a line per group (coordinator) and per stage run (worker), with its group_id (default info)",
    )
    p.add_argument("--log-format", default="json", choices=["json", "text"], help="log lines on stderr (default json)")
    p.add_argument(
        "--trace",
        choices=["otlp", "console"],
        help="trace the gRPC calls with OpenTelemetry: to $OTEL_EXPORTER_OTLP_ENDPOINT, or as JSON on stdout "
        "(needs distree[tracing])",
    )


def _limits(args: argparse.Namespace):
    from distree.runtime.security import ServerLimits

    return ServerLimits(max_connections=args.max_connections, idle_timeout_s=args.idle_timeout_s)


def _tls(args: argparse.Namespace):
    from distree.runtime.security import TLSFiles

    return TLSFiles(args.tls_cert, args.tls_key, args.tls_ca)


def _token(args: argparse.Namespace) -> str | None:
    from distree.runtime.security import resolve_token

    return resolve_token(args.token, args.token_file)


def _host(listen: str) -> str:
    """The host part of HOST:PORT ([v6] brackets dropped)."""
    return listen.rsplit(":", 1)[0].strip("[]") or "0.0.0.0"


def _metrics_host(args: argparse.Namespace) -> str:
    return args.metrics_addr or _host(args.listen)


def _serve_forever(coro) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(coro)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Serve one branch."""
    from distree.runtime.logs import setup_logging
    from distree.runtime.metrics import serve_metrics
    from distree.runtime.tracing import setup_tracing
    from distree.runtime.worker import WorkerOptions, serve_worker

    setup_logging(args.log_level, args.log_format)
    setup_tracing(args.trace, f"distree-worker-{args.branch}")
    if args.backend == "torch":
        from distree.hardware import pick_device
        from distree.run import RunDir
        from distree.runtime.torch_stages import TorchStages

        if args.providers:
            raise ValueError("--providers are onnxruntime's: give them with --backend onnxruntime")
        backend = TorchStages(RunDir(args.source), args.branch, pick_device(args.device), args.threads)
    else:
        from distree.runtime.ort_stages import OrtStages

        if args.device:
            raise ValueError("--device is for --backend torch; onnxruntime takes --providers")
        backend = OrtStages(args.source, args.branch, args.threads, args.providers)
    serve_metrics(args.metrics_port, "worker", _metrics_host(args))
    opts = WorkerOptions(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        state_ttl_s=args.state_ttl_s,
        max_states=args.max_states,
        max_state_mib=args.max_state_mib,
        max_session_states=args.max_session_states,
        max_session_state_mib=args.max_session_state_mib,
    )
    return _serve_forever(
        serve_worker(
            backend,
            args.branch,
            args.listen,
            opts,
            _token(args),
            _tls(args),
            debug_rpcs=args.debug_rpcs,
            grace_s=args.grace_s,
            limits=_limits(args),
        )
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the coordinator."""
    from distree.runtime.coordinator import CoordinatorOptions, serve_coordinator
    from distree.runtime.logs import setup_logging
    from distree.runtime.metrics import serve_metrics
    from distree.runtime.security import TLSFiles, resolve_token
    from distree.runtime.served_model import served_model
    from distree.runtime.tracing import setup_tracing

    setup_logging(args.log_level, args.log_format)
    setup_tracing(args.trace, "distree-coordinator")
    worker_tls = TLSFiles(args.worker_tls_cert, args.worker_tls_key, args.worker_tls_ca)
    tls, token = _tls(args), _token(args)
    if args.cluster:
        from distree.runtime.cluster import load_cluster

        if args.run_dir or args.workers:
            raise ValueError("--cluster names the run and the workers: give RUN_DIR and --workers only without it")
        cluster = load_cluster(args.cluster)
        c = cluster.coordinator
        args.backend = args.backend or c.backend
        run_dir = cluster.export if args.backend == "onnxruntime" else cluster.run
        if run_dir is None:
            field = "export" if args.backend == "onnxruntime" else "run"
            raise ValueError(f"--backend {args.backend} serves the cluster file's {field}:, which it does not give")
        workers = cluster.addresses
        # A flag given on the command line wins over the file.
        args.listen, args.policy = args.listen or c.listen, args.policy or c.policy
        args.mode, args.metrics_port = args.mode or c.mode, args.metrics_port or c.metrics_port
        if cluster.tls and not tls.enabled:
            tls = cluster.tls.files()
        if cluster.worker_tls and not worker_tls.enabled:
            worker_tls = cluster.worker_tls.files()
        if token is None and cluster.token_file:
            token = resolve_token(None, cluster.token_file)
    else:
        if not (args.run_dir and args.workers):
            raise ValueError("give RUN_DIR (or EXPORT with --backend onnxruntime) and --workers, or --cluster FILE")
        run_dir, workers = args.run_dir, [w.strip() for w in args.workers.split(",") if w.strip()]
    args.backend = args.backend or SERVE_DEFAULTS.backend
    args.listen = args.listen or SERVE_DEFAULTS.listen
    args.policy = args.policy or SERVE_DEFAULTS.policy
    args.mode = args.mode or SERVE_DEFAULTS.mode
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    model = served_model(run_dir, args.backend, args.threads, args.providers)
    serve_metrics(args.metrics_port, "coordinator", _metrics_host(args))
    opts = CoordinatorOptions(
        mode=args.mode,
        policy=args.policy,
        stage_timeout_ms=args.stage_timeout_ms,
        max_group_inputs=args.max_group_inputs,
        max_groups=args.max_groups,
        min_group_inputs=args.min_group_inputs,
        max_group_wait_ms=args.max_group_wait_ms,
        max_queued_inputs=args.max_queued_inputs,
        depth_only=args.depth_only,
    )
    return _serve_forever(
        serve_coordinator(
            model, workers, args.listen, opts, token, tls, worker_tls, grace_s=args.grace_s, limits=_limits(args)
        )
    )


def _infer_images(args: argparse.Namespace) -> int:
    """Classify image files (and the images in folders) given on the command line."""
    from distree.images import image_files, pillow
    from distree.runtime.client import DistreeClient, InferenceError

    files = image_files(args.images)
    pillow()  # image files are decoded here: say so before connecting, not after
    out = sys.stderr if args.json == "-" else sys.stdout  # stdout holds the JSON then
    records = []
    with DistreeClient(args.server, token=_token(args), tls=_tls(args)) as client:
        try:
            answers = client.infer(files, args.deadline_ms, batch=args.batch)
        except InferenceError as err:
            print(f"distree infer: {err}", file=sys.stderr)
            return 1
    for f, a in zip(files, answers, strict=True):
        print(f"{f}\t{a.class_name}\t{a.probability:.3f}\texit {a.exit}", file=out)
        records.append(
            {"image": str(f), "class": a.class_name, "prediction": a.prediction, "probability": round(a.probability, 5)}
            | {"exit": a.exit, "branches": a.branches, "stop_reason": a.stop_reason, "macs": a.macs}
        )
    if args.json:
        write_json(args.json, {"server": args.server, "images": records}, args)
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    """Send a data set's test split, or image files, through a running coordinator."""
    if args.images:
        if args.data:
            raise ValueError("give image files or --data, not both")
        return _infer_images(args)
    from distree.data import load_data
    from distree.runtime.loadgen import format_infer, run_infer

    splits = load_data(args.data, args.format)
    test = splits.test
    n = min(args.limit or len(test), len(test))
    result = run_infer(
        args.server,
        test.images[:n],
        test.labels[:n],
        token=_token(args),
        tls=_tls(args),
        concurrency=args.concurrency,
        deadline_ms=args.deadline_ms,
        batch=args.batch,
    )
    print(format_infer(result), file=sys.stderr if args.json == "-" else sys.stdout)
    # Written whatever happened: the answers received are kept even when calls failed.
    if args.json:
        write_json(args.json, result, args)
    if result["failed"]:
        print(
            f"distree infer: {result['failed']} of {result['samples']} inputs got no answer "
            f"({'; '.join(result['errors'])})",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """The gRPC health check, for container probes: 0 serving, 1 not serving, 2 unreachable."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    tls = _tls(args)
    from distree.runtime.security import make_blocking_channel

    with make_blocking_channel(args.address, tls) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=args.timeout_s)
        except grpc.RpcError as err:
            print(f"{args.address}: unreachable ({err.code().name})")
            return 2
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """The runtime demo (``distree.launch.demo``) on this run's test split."""
    from distree.data import load_data
    from distree.launch.demo import DemoSettings, demo_export, format_demo, run_demo
    from distree.run import RunDir

    cluster = None
    if args.cluster:  # the boards of a cluster file instead of local workers
        from distree.runtime.cluster import load_cluster

        if args.run_dir or args.backend != "torch" or args.export:
            raise ValueError("--cluster names the run, and its workers run what they run: no --run-dir or --backend")
        cluster = load_cluster(args.cluster)
        if cluster.worker_tls:
            raise ValueError(
                "demo --cluster reaches workers in plaintext: for TLS workers use serve --cluster and infer"
            )
        if cluster.run is None:
            raise ValueError("demo --cluster compares the cluster with the torch model: its file needs run: RUN_DIR")
        args.run_dir = str(cluster.run)
    if args.export and args.backend != "onnxruntime":
        raise ValueError("--export is read by --backend onnxruntime only")
    run = RunDir(args.run_dir or shipped(DEFAULT_DEMO_RUN))
    meta = run.meta
    test = load_data(args.data, args.format, meta.config.data.val_fraction, meta.config.data.split_seed).test
    n = min(args.limit, len(test))
    export = demo_export(run, args.export, log) if args.backend == "onnxruntime" else None
    settings = DemoSettings(
        run=run,
        images=test.images[:n],
        labels=test.labels[:n],
        policies=args.policy or DEMO_POLICIES,
        mode=args.mode,
        concurrency=args.concurrency,
        export=export,
        cluster=cluster,
    )
    result = run_demo(settings, log)
    print(format_demo(result))
    log(f"all processes stopped; {result.wall_s}s in all")
    if args.json:
        write_json(args.json, result.to_json(), args)
    return 0


def add_runtime_commands(sub, add_data_args) -> None:
    """Register worker, serve, infer and demo."""
    p = sub.add_parser("worker", help="serve one branch of a trained run (a device)")
    p.add_argument(
        "source", metavar="RUN_OR_EXPORT", help="the run directory (--backend torch) or a 'distree export' directory"
    )
    p.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="torch on the run's weights, or onnxruntime on an export: no torch needed (default torch)",
    )
    p.add_argument("--branch", type=INDEX, required=True, help="which branch this device runs (0-based)")
    p.add_argument("--listen", default="127.0.0.1:50061", help="HOST:PORT to listen on")
    p.add_argument("--max-batch", type=COUNT, default=128, help="most inputs batched into one stage's forward pass")
    p.add_argument(
        "--max-wait-ms", type=NON_NEGATIVE, default=0.0, help="extra wait to fill a batch (0: what is queued)"
    )
    p.add_argument("--state-ttl-s", type=POSITIVE, default=30.0, help="drop a group's state after this silence")
    p.add_argument(
        "--max-states", type=COUNT, default=4096, help="groups holding state at once; more: RESOURCE_EXHAUSTED"
    )
    p.add_argument(
        "--max-state-mib",
        type=POSITIVE,
        default=1024.0,
        help="MiB of group state held at once; more is refused",
    )
    p.add_argument(
        "--max-session-states",
        type=COUNT,
        help="groups one coordinator's session may hold at once (default: --max-states); set lower when "
        "several coordinators share the worker",
    )
    p.add_argument(
        "--max-session-state-mib",
        type=POSITIVE,
        help="MiB of group state one session may hold (default: --max-state-mib)",
    )
    p.add_argument("--threads", type=COUNT, help="compute threads (default: the backend's choice)")
    p.add_argument("--device", help="--backend torch: torch device (default: cuda when present, else cpu)")
    _providers_arg(p)
    _service_args(p)
    p.add_argument(
        "--debug-rpcs",
        action="store_true",
        help="also serve WorkerDebug (one stage per call, drops): for tests and measurements only",
    )
    _tls_args(p, "worker")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("serve", help="run the coordinator over a set of workers")
    p.add_argument(
        "run_dir",
        nargs="?",
        metavar="RUN_OR_EXPORT",
        help="the trained run (--backend torch) or a 'distree export' directory (--backend onnxruntime); "
        "not with --cluster",
    )
    p.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        help="where the exit heads run: torch on the run's weights, or onnxruntime on an export, so that the "
        f"coordinator needs no torch (default: the cluster file's, else {SERVE_DEFAULTS.backend})",
    )
    _providers_arg(p)
    p.add_argument("--workers", help="HOST:PORT of each worker, comma-separated, in branch order")
    p.add_argument(
        "--cluster",
        type=Path,
        metavar="FILE",
        help="a cluster file: the run, the workers, and the coordinator's settings (flags given here win)",
    )
    p.add_argument("--listen", help=f"HOST:PORT to listen on (default {SERVE_DEFAULTS.listen})")
    p.add_argument("--mode", choices=["lockstep", "eager"], help=f"how stages are sent (default {SERVE_DEFAULTS.mode})")
    p.add_argument(
        "--policy",
        type=policy_type(servable=True),
        help=f"exit policy (default {DEFAULT_POLICY}; 'distree policies' lists them)",
    )
    p.add_argument("--stage-timeout-ms", type=POSITIVE, default=1000.0, help="per-stage deadline for worker answers")
    p.add_argument(
        "--max-group-inputs", type=COUNT, default=128, help="inputs of waiting calls that start as one group"
    )
    p.add_argument("--max-groups", type=COUNT, default=4, help="groups in flight at once")
    p.add_argument(
        "--depth-only",
        action="store_true",
        help="wake every device for every input, even where the calibration holds a schedule over depth "
        "and devices (hard inputs answer sooner; every input costs more)",
    )
    p.add_argument(
        "--threads",
        type=COUNT,
        default=1,
        help="compute threads of the exit heads (default 1: they are small, and more threads spin "
        "against the workers and the network when cores are shared)",
    )
    p.add_argument(
        "--min-group-inputs",
        type=COUNT,
        default=32,
        help="inputs a group needs to start at once while other groups run",
    )
    p.add_argument(
        "--max-group-wait-ms",
        type=NON_NEGATIVE,
        default=50.0,
        help="while other groups run, the longest a call waits for others to join its group",
    )
    p.add_argument(
        "--max-queued-inputs",
        type=COUNT,
        default=8 * 4096,
        help="inputs of calls waiting to start; a call beyond it is refused at once (RESOURCE_EXHAUSTED)",
    )
    _service_args(p)
    _tls_args(p, "coordinator")
    p.add_argument("--worker-tls-cert", type=Path, help="client certificate towards workers (mutual TLS)")
    p.add_argument("--worker-tls-key", type=Path, help="private key of --worker-tls-cert")
    p.add_argument("--worker-tls-ca", type=Path, help="CA that signed the workers' certificates")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "infer", help="classify image files or folders, or send a data set's test split, through a running coordinator"
    )
    p.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="image files or folders of them (any size: converted to the model's input); without them, --data",
    )
    p.add_argument("--server", required=True, help="coordinator HOST:PORT")
    add_data_args(p)
    p.add_argument("--limit", type=COUNT, help="send only the first N test images")
    p.add_argument("--concurrency", type=COUNT, default=4, help="calls in flight")
    p.add_argument("--batch", type=COUNT, default=1, help="inputs per call")
    p.add_argument("--deadline-ms", type=NON_NEGATIVE, default=0.0, help="per-input deadline (0 = none)")
    p.add_argument("--json", help="write the summary and every answer to this file ('-': to stdout)")
    _tls_args(p, "client")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("demo", help="the distributed runtime end to end on local processes")
    p.add_argument(
        "--cluster",
        type=Path,
        metavar="FILE",
        help="run the demo on the workers of a cluster file (already running) instead of starting local ones",
    )
    p.add_argument("--run-dir", help=f"trained run (default {DEFAULT_DEMO_RUN}, from here or from distree's checkout)")
    add_data_args(p)
    p.add_argument("--limit", type=COUNT, default=1000, help="test images to send (default 1000)")
    p.add_argument(
        "--policy",
        action="append",
        type=policy_type(servable=True, calibrated=True),
        help=f"an early-exit policy to compare with full execution; repeat for more (default: {' then '.join(DEMO_POLICIES)})",
    )
    p.add_argument("--mode", choices=["lockstep", "eager"], default="lockstep", help="how the coordinators send stages")
    p.add_argument(
        "--concurrency",
        type=COUNT,
        default=1,
        help="calls in flight (default 1: each call's latency without waiting behind others; more measures "
        "throughput, and then latency is mostly the wait in line on a machine with few cores)",
    )
    p.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="what the workers and coordinators run: the run's torch weights, or an ONNX export under "
        "onnxruntime (no torch in the cluster), whose answers are then compared with the torch model's (default torch)",
    )
    p.add_argument(
        "--export", help="with --backend onnxruntime: a 'distree export' of the run (default: export it now)"
    )
    p.add_argument("--json", help="write the results to this file")
    p.set_defaults(func=cmd_demo, tls_cert=None, tls_key=None, tls_ca=None)

    p = sub.add_parser(
        "health", help="ask a worker or coordinator whether it serves (exit 0 serving, 1 not serving, 2 unreachable)"
    )
    p.add_argument("address", help="HOST:PORT")
    p.add_argument("--timeout-s", type=POSITIVE, default=3.0, help="how long to wait for the answer")
    p.add_argument("--tls-ca", type=Path, help="PEM CA of a TLS server")
    p.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", type=Path, help="private key of --tls-cert")
    p.set_defaults(func=cmd_health)
