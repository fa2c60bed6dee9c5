"""The simulated cluster on SimPy: devices that compute and come and go, links that carry bytes."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import simpy

from distree.simulation.scenario import Device, Link, Scenario


class SimDevice:
    """One device: a FIFO processor (one stage at a time) with an availability process.

    Work in progress is lost when the device goes down; ``compute`` then reports failure.
    """

    def __init__(self, env: simpy.Environment, spec: Device, rng: np.random.Generator):
        self.env = env
        self.spec = spec
        self.cpu = simpy.Resource(env, capacity=1)
        self.up = spec.availability.up
        self.generation = 0  # bumps on every down transition: older work is lost
        self.busy_s = 0.0
        self.macs = 0.0
        self._rng = rng
        a = spec.availability
        if a.trace is not None or a.mean_up_s is not None:
            env.process(self._availability())

    def _set(self, up: bool) -> None:
        if self.up and not up:
            self.generation += 1
        self.up = up

    def _availability(self) -> Generator:
        a = self.spec.availability
        if a.trace is not None:
            for t, up in a.trace:
                yield self.env.timeout(max(0.0, t - self.env.now))
                self._set(up)
            return
        while True:
            mean = a.mean_up_s if self.up else a.mean_down_s
            yield self.env.timeout(self._rng.exponential(mean))
            self._set(not self.up)

    def compute(self, macs: float) -> Generator:
        """Queue for the processor, then run ``macs``; the process's value is True on success."""
        if not self.up:
            return False
        generation = self.generation
        with self.cpu.request() as req:
            yield req
            if self.generation != generation or not self.up:
                return False
            dt = self.spec.overhead_ms / 1000 + macs / self.spec.macs_per_s
            cv = self.spec.stage_time_cv
            if cv:
                # A busy or shared device does not take the same time twice; gamma keeps it positive.
                dt *= self._rng.gamma(1 / cv**2, cv**2)
            yield self.env.timeout(dt)
            self.busy_s += dt
            self.macs += macs
        return self.generation == generation and self.up


class TokenBucket:
    """Serialisation time of a link direction; with a burst, an idle link sends up to
    ``burst`` bytes at once (as a token-bucket shaper does), else every byte at the rate."""

    def __init__(self, bytes_per_s: float, burst: int):
        self.rate = bytes_per_s
        self.burst = burst
        self.tokens = float(burst)
        self.last = 0.0

    def serialisation_s(self, size: int, now: float) -> float:
        """Time to put ``size`` bytes on the wire starting at ``now`` (the caller holds the link)."""
        if not self.burst:
            return size / self.rate
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        if size <= self.tokens:
            self.tokens -= size
            self.last = now
            return 0.0
        wait = (size - self.tokens) / self.rate
        self.tokens, self.last = 0.0, now + wait
        return wait


class Network:
    """Star network: each device has a link to the coordinator's switch or access point.

    A transfer of B bytes occupies the sender's direction of the link (or the one shared
    medium) for (B + header) * 8 / bandwidth (less what a shaper's burst lets through at
    once), then takes rtt/2 plus jitter to arrive.
    Device-to-device traffic crosses two links (up, then down).
    """

    def __init__(self, env: simpy.Environment, scenario: Scenario, rng: np.random.Generator):
        self.env = env
        self.links = [scenario.link_of(i) for i in range(len(scenario.devices))]
        shared = simpy.Resource(env, 1) if scenario.shared_medium else None
        self._channels = [{d: shared or simpy.Resource(env, 1) for d in ("up", "down")} for _ in scenario.devices]
        # One bucket per channel: the shared medium has one, at the scenario link's rate.
        common = TokenBucket(scenario.link.bandwidth_mbps * 1e6 / 8, scenario.link.burst_bytes) if shared else None
        self._buckets = [
            {d: common or TokenBucket(link.bandwidth_mbps * 1e6 / 8, link.burst_bytes) for d in ("up", "down")}
            for link in self.links
        ]
        self.bytes = 0
        self.device_bytes = [0] * len(scenario.devices)  # both directions of each device's link
        self._busy: dict[int, float] = {}  # per channel (id of its resource): time spent sending
        self._rng = rng

    @property
    def busiest_channel_s(self) -> float:
        """The most time any one channel (a link direction, or the shared medium) spent sending."""
        return max(self._busy.values(), default=0.0)

    def one_way_s(self, link: Link) -> float:
        """A propagation delay draw: rtt/2 with Gaussian jitter, never negative."""
        delay = link.rtt_ms / 2 + (self._rng.normal(0.0, link.jitter_ms) if link.jitter_ms else 0.0)
        return max(0.0, delay) / 1000

    def transfer(self, device: int, direction: str, nbytes: int) -> Generator:
        """Carry one message between the coordinator and ``device`` ("up": to the coordinator)."""
        link = self.links[device]
        size = nbytes + link.header_bytes
        channel = self._channels[device][direction]
        with channel.request() as req:
            yield req
            sending = self._buckets[device][direction].serialisation_s(size, self.env.now)
            yield self.env.timeout(sending)
        self._busy[id(channel)] = self._busy.get(id(channel), 0.0) + sending
        self.bytes += size
        self.device_bytes[device] += size
        yield self.env.timeout(self.one_way_s(link))

    def device_to_device(self, src: int, dst: int, nbytes: int) -> Generator:
        """Carry one message from device ``src`` to device ``dst`` through the switch."""
        yield from self.transfer(src, "up", nbytes)
        yield from self.transfer(dst, "down", nbytes)


class Health:
    """The coordinator's view of which devices to use, with the runtime's retry back-off."""

    def __init__(
        self, env: simpy.Environment, devices: list[SimDevice], network: Network, initial_s: float, max_s: float
    ):
        self.env = env
        self.devices = devices
        self.network = network
        self.usable = [True] * len(devices)
        self._initial, self._max = initial_s, max_s
        self._backoff = [initial_s] * len(devices)

    def failed(self, device: int) -> None:
        """Stop using ``device`` until a connection attempt finds it up again."""
        if self.usable[device]:
            self.usable[device] = False
            self.env.process(self._reconnect(device))

    def _reconnect(self, device: int) -> Generator:
        while True:
            yield self.env.timeout(self._backoff[device])
            self._backoff[device] = min(self._backoff[device] * 2, self._max)
            yield self.env.timeout(self.network.one_way_s(self.network.links[device]) * 2)
            if self.devices[device].up:
                self.usable[device] = True
                self._backoff[device] = self._initial
                return
