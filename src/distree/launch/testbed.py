"""Emulated testbed: each worker in its own Linux network namespace, behind a shaped link.

Device ``i`` lives in namespace ``distree-w{i}``, joined to the root namespace (where the
coordinator and the client run) by a veth pair. Both ends of the pair are shaped, because
a qdisc shapes only what leaves an interface: with ``netem`` (delay, jitter, rate) when the
kernel has it, else with ``tbf`` (rate only; a scenario with delay then cannot be emulated
and is refused with a message saying so). Needs root and iproute2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

from distree.simulation.scenario import Link

PREFIX = "distree-w"
#: A small MTU keeps the emulated link's packets close to the simulator's fluid model.
MTU = 1500


class TestbedUnavailable(RuntimeError):
    """This machine cannot run the emulated testbed; the message says why."""

    __test__ = False  # not a pytest test class, despite the name


def _run(cmd: Sequence[str], ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    out = subprocess.run(full, capture_output=True, text=True)
    if check and out.returncode:
        raise RuntimeError(f"{' '.join(full)} failed: {out.stderr.strip()}")
    return out


def _qdisc_works(kind: str) -> bool:
    """Whether the kernel accepts a qdisc of this kind (tried on a throwaway veth pair)."""
    a, b = "dtprobe0", "dtprobe1"
    _run(["ip", "link", "del", a], check=False)
    if _run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=False).returncode:
        return False
    try:
        args = {"netem": ["delay", "1ms"], "tbf": ["rate", "1mbit", "burst", "4kb", "latency", "100ms"]}[kind]
        return _run(["tc", "qdisc", "add", "dev", a, "root", kind, *args], check=False).returncode == 0
    finally:
        _run(["ip", "link", "del", a], check=False)


def capabilities() -> dict[str, bool]:
    """What link emulation this machine supports; raises TestbedUnavailable if none."""
    if os.geteuid() != 0:
        raise TestbedUnavailable("the emulated testbed needs root (network namespaces and tc)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise TestbedUnavailable(f"the emulated testbed needs '{tool}' (package iproute2)")
    ns = "distree-capability-check"
    if _run(["ip", "netns", "add", ns], check=False).returncode:
        raise TestbedUnavailable("cannot create network namespaces here (ip netns add failed)")
    _run(["ip", "netns", "del", ns], check=False)
    caps = {"netem": _qdisc_works("netem"), "tbf": _qdisc_works("tbf")}
    if not any(caps.values()):
        raise TestbedUnavailable("the kernel has neither the netem nor the tbf queueing discipline")
    return caps


def shaping_args(link: Link, caps: dict[str, bool]) -> list[str]:
    """The ``tc qdisc ... root`` arguments that emulate one direction of ``link``."""
    rate = f"{link.bandwidth_mbps * 1000:.0f}kbit"
    if caps.get("netem"):
        delay = ["delay", f"{link.rtt_ms / 2:.3f}ms"] + ([f"{link.jitter_ms:.3f}ms"] if link.jitter_ms else [])
        return ["netem", *delay, "rate", rate]
    if link.rtt_ms or link.jitter_ms:
        raise TestbedUnavailable(
            "this kernel has no netem queueing discipline, so link delay and jitter cannot be emulated; "
            "only bandwidth (tbf): use a scenario with rtt_ms: 0 and jitter_ms: 0"
        )
    # tbf needs a bucket of at least one packet; an idle link sends that much at once, which
    # the simulator models with the link's burst_bytes (min_burst_bytes() here).
    return ["tbf", "rate", rate, "burst", str(max(link.burst_bytes, min_burst_bytes())), "latency", "2s"]


def min_burst_bytes() -> int:
    """The smallest token bucket tbf accepts on the testbed's links: one full packet."""
    return MTU + 100


class Testbed:
    """``n`` namespaces with shaped links; ``host(i)`` is device i's address from the root namespace."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, n: int, caps: dict[str, bool] | None = None):
        self.n = n
        self.caps = caps if caps is not None else capabilities()
        self._made: list[int] = []

    def host(self, i: int) -> str:
        """IP address of device ``i`` inside its namespace."""
        return f"10.213.{i}.2"

    def namespace(self, i: int) -> str:
        """Namespace name of device ``i``."""
        return f"{PREFIX}{i}"

    def command_prefix(self, i: int) -> list[str]:
        """Prefix that runs a command inside device ``i``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(i)]

    def up(self) -> Testbed:
        """Create namespaces and links (unshaped)."""
        self.down()
        for i in range(self.n):
            ns, a, b = self.namespace(i), f"dtw{i}a", f"dtw{i}b"
            _run(["ip", "netns", "add", ns])
            self._made.append(i)
            _run(["ip", "link", "add", a, "mtu", str(MTU), "type", "veth", "peer", "name", b, "mtu", str(MTU)])
            _run(["ip", "link", "set", b, "netns", ns])
            _run(["ip", "addr", "add", f"10.213.{i}.1/24", "dev", a])
            _run(["ip", "link", "set", a, "up"])
            _run(["ip", "addr", "add", f"{self.host(i)}/24", "dev", b], ns=ns)
            _run(["ip", "link", "set", b, "up"], ns=ns)
            _run(["ip", "link", "set", "lo", "up"], ns=ns)
        return self

    def shape(self, links: Sequence[Link | None]) -> None:
        """Shape device i's link in both directions as ``links[i]`` (None: unshaped)."""
        for i, link in enumerate(links):
            for dev, ns in ((f"dtw{i}a", None), (f"dtw{i}b", self.namespace(i))):
                _run(["tc", "qdisc", "del", "dev", dev, "root"], ns=ns, check=False)
                if link is not None:
                    _run(["tc", "qdisc", "add", "dev", dev, "root", *shaping_args(link, self.caps)], ns=ns)

    def down(self) -> None:
        """Remove every namespace and link this testbed (or an earlier, crashed one) made."""
        for i in range(self.n):
            _run(["ip", "link", "del", f"dtw{i}a"], check=False)
            _run(["ip", "netns", "del", self.namespace(i)], check=False)
        self._made.clear()

    def __enter__(self) -> Testbed:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()
