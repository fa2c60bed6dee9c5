"""The deployment files: every distree command in them parses with distree's own argument
parser, they agree with each other on names and ports, and hadolint passes the Dockerfile.
(No Docker daemon or Kubernetes cluster here: what they do at run time is not tested.)"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distree.cli.main import build_parser

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"


def _parses(argv: list[str]):
    """``distree ARGV`` as the command line would parse it; fails the test naming the
    command when it does not."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as done:  # --help and --version end the parse too, with status 0
        if done.code:
            pytest.fail(f"distree {shlex.join(argv)} does not parse")


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_every_compose_command_parses_and_the_services_agree():
    services = _compose()["services"]
    workers = {name: s for name, s in services.items() if s.get("command", [None])[0] == "worker"}
    branches = {}
    for name, s in workers.items():
        args = _parses(s["command"])
        assert args.backend == "onnxruntime" and args.listen == "0.0.0.0:50061"
        branches[args.branch] = name
        _parses(s["healthcheck"]["test"][2:])  # [CMD, distree, ...]
    assert sorted(branches) == list(range(len(workers))) == [0, 1, 2, 3]
    coordinator = services["coordinator"]
    args = _parses(coordinator["command"])
    assert args.workers.split(",") == [f"{branches[b]}:50061" for b in range(4)]
    # A board's image for every distree service: the heads run on onnxruntime, no torch.
    assert args.backend == "onnxruntime" and {s["image"] for s in [*workers.values(), coordinator]} == {"distree:board"}
    assert set(coordinator["depends_on"]) == set(workers)
    _parses(coordinator["healthcheck"]["test"][2:])
    # Prometheus scrapes every distree service where its metrics listen.
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    metrics = {
        f"{name}:{_parses(s['command']).metrics_port}" for name, s in [*workers.items(), ("coordinator", coordinator)]
    }
    assert targets == metrics


def test_grafana_is_provisioned_with_the_dashboard():
    grafana = _compose()["services"]["grafana"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    dashboard = DEPLOY / mounted["/var/lib/grafana/dashboards/distree.json"]
    assert json.loads(dashboard.read_text())["uid"] == "distree"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/distree.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_the_systemd_units_run_commands_that_parse():
    for unit in (DEPLOY / "systemd").glob("*.service"):
        lines = [line.split("=", 1)[1] for line in unit.read_text().splitlines() if line.startswith("ExecStart")]
        assert lines, unit
        for line in lines:
            argv = shlex.split(line.replace("%i", "0"))
            assert argv[0].endswith("/distree"), line
            _parses(argv[1:])


def test_the_kubernetes_manifests_run_commands_that_parse_with_grpc_probes():
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / "distree.yaml").read_text()) if d]
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    workers = by_kind[("StatefulSet", "distree-worker")]["spec"]
    coordinator = by_kind[("Deployment", "distree-coordinator")]["spec"]
    for spec in (workers, coordinator):
        (container,) = spec["template"]["spec"]["containers"]
        args = _parses([a.replace("$(BRANCH)", "0") for a in container["args"]])
        port = int(args.listen.rsplit(":", 1)[1])
        assert container["readinessProbe"]["grpc"]["port"] == container["livenessProbe"]["grpc"]["port"] == port
    # The coordinator names each worker pod through the headless service, branch k on pod k.
    (container,) = coordinator["template"]["spec"]["containers"]
    names = [f"distree-worker-{k}.{workers['serviceName']}:50061" for k in range(workers["replicas"])]
    args = _parses(container["args"])
    assert args.workers.split(",") == names
    assert args.backend == "onnxruntime" and container["image"] == "distree:board"


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(
    _hadolint() is None, reason="hadolint is not installed (the test extra installs it on x86_64 and aarch64)"
)
def test_hadolint_passes_the_dockerfile():
    proc = subprocess.run([_hadolint(), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_images_default_commands_parse():
    for cmd in re.findall(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.MULTILINE):
        _parses(json.loads(cmd))
