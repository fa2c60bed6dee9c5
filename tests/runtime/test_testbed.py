import socket
import subprocess
import sys
import time

import pytest

from distree.launch.testbed import Testbed, TestbedUnavailable, capabilities, shaping_args
from distree.simulation.scenario import Link


def test_shaping_args_netem_and_tbf():
    link = Link(bandwidth_mbps=2, rtt_ms=10, jitter_ms=1)
    assert shaping_args(link, {"netem": True}) == ["netem", "delay", "5.000ms", "1.000ms", "rate", "2000kbit"]
    with pytest.raises(TestbedUnavailable, match="no netem.*delay and jitter cannot be emulated"):
        shaping_args(link, {"netem": False, "tbf": True})
    args = shaping_args(Link(bandwidth_mbps=2, rtt_ms=0), {"netem": False, "tbf": True})
    assert args[:5] == ["tbf", "rate", "2000kbit", "burst", "1600"]


def test_namespaces_connect_and_are_removed():
    try:
        caps = capabilities()
    except TestbedUnavailable as err:
        pytest.skip(f"emulated testbed unavailable here: {err}")
    with Testbed(1, caps) as tb:
        server = subprocess.Popen(
            [
                *tb.command_prefix(0),
                sys.executable,
                "-c",
                "import socket; s = socket.create_server(('0.0.0.0', 50999)); c, _ = s.accept(); "
                "c.sendall(c.recv(16)); c.close()",
            ]
        )
        try:
            for _ in range(50):
                try:
                    with socket.create_connection((tb.host(0), 50999), timeout=1) as s:
                        s.sendall(b"ping")
                        assert s.recv(16) == b"ping"
                        break
                except ConnectionRefusedError:
                    time.sleep(0.1)
            else:
                pytest.fail("no connection into the namespace")
        finally:
            server.kill()
            server.wait()
        tb.shape([Link(bandwidth_mbps=5, rtt_ms=0)])
        tb.shape([None])
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert tb.namespace(0) not in names
