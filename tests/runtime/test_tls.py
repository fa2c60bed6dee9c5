"""Mutual TLS between client, coordinator and workers, with certificates made by openssl."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import until

from distree.launch.local import LocalCluster
from distree.runtime.client import DistreeClient, InferenceError
from distree.runtime.security import TLSFiles

pytestmark = [
    pytest.mark.e2e,  # real processes: TLS servers started as their commands
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_pki(d):
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "1", "-subj", "/CN=distree-test-ca", cwd=d)  # fmt: skip
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d)  # fmt: skip


def test_mutual_tls_end_to_end_and_a_plaintext_coordinator_says_why_it_waits(trained, tmp_path):
    run, splits = trained
    _make_pki(tmp_path)
    server = ["--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server.key"),
              "--tls-ca", str(tmp_path / "ca.pem")]  # fmt: skip
    client_tls = TLSFiles(tmp_path / "client.pem", tmp_path / "client.key", tmp_path / "ca.pem")
    to_workers = ["--worker-tls-cert", str(tmp_path / "client.pem"), "--worker-tls-key",
                  str(tmp_path / "client.key"), "--worker-tls-ca", str(tmp_path / "ca.pem")]  # fmt: skip
    with LocalCluster(run.path, log_dir=tmp_path, tls=client_tls) as cluster:
        cluster.start_workers(3, extra=server)
        coord = cluster.start_coordinator(extra=server + to_workers)
        with DistreeClient(coord, tls=client_tls) as client:
            answers = client.infer(splits.test.images[:4])
        assert len(answers) == 4 and all(a.branches == [0, 1, 2] for a in answers)
        # Without a client certificate the server refuses the connection.
        with DistreeClient(coord, tls=TLSFiles(ca=tmp_path / "ca.pem"), timeout_s=5) as client:
            with pytest.raises(InferenceError):
                client.infer(splits.test.images[:1])
        # A coordinator without --worker-tls-*: it reaches the same workers in plaintext, and says why it waits.
        workers = cluster.worker_addresses
        cluster.start_coordinators({"plaintext": []}, wait=False)
        log = tmp_path / "plaintext.log"

        def waiting_lines():
            return [ln for ln in log.read_text().splitlines() if '"msg": "waiting for worker"' in ln]

        named = [f'"address": "{w}"' for w in workers]
        assert until(lambda: all(any(a in ln for ln in waiting_lines()) for a in named)), log.read_text()
        assert all("does the worker expect TLS?" in ln for ln in waiting_lines())
