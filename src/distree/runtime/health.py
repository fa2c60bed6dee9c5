"""The standard gRPC health service, asyncio flavour."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from distree.runtime.security import ServerLimits, TLSFiles, add_port, make_server

HealthServicer = health.aio.HealthServicer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

__all__ = ["NOT_SERVING", "SERVING", "HealthServicer", "serve_until_stopped", "set_health", "start_server"]


async def set_health(servicer: HealthServicer, status: int) -> None:
    """Set the overall status ("") of a server."""
    await servicer.set("", status)


async def start_server(
    register: Callable[[aio.Server], None],
    listen: str,
    token: str | None,
    tls: TLSFiles,
    limits: ServerLimits = ServerLimits(),
    identity: str = "",
) -> tuple[aio.Server, HealthServicer, int]:
    """Start a server with the health service (NOT_SERVING for now) and the services
    ``register`` adds; returns (server, health servicer, bound port). ``identity``: what
    the server is to its clients, named in the key's proofs (``ServerAuth``)."""
    server = make_server(token, limits, identity)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    register(server)
    await set_health(health_servicer, NOT_SERVING)
    port = add_port(server, listen, tls)
    await server.start()
    return server, health_servicer, port


async def serve_until_stopped(
    server: aio.Server,
    health_servicer: HealthServicer,
    grace_s: float,
    log: logging.Logger,
    on_stop: Callable[[], None] = lambda: None,
) -> None:
    """Serve until SIGTERM or SIGINT (what ``docker stop``, systemd and Ctrl-C send) or until
    cancelled; then drain: NOT_SERVING first, so load balancers stop sending, ``on_stop()``
    (what the service does to stop taking work on calls already open, such as streams), then
    the calls in flight get up to ``grace_s`` to finish, then log ``stopped``."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    handled = []
    for sig in signals:
        try:
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread: cancellation only
            pass
    try:
        await stop.wait()
        log.info("stopping", extra={"grace_s": grace_s})
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await set_health(health_servicer, NOT_SERVING)
        on_stop()
        await server.stop(grace=grace_s)
        log.info("stopped")
