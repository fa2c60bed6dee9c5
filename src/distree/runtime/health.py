"""The standard gRPC health service, asyncio flavour."""

from __future__ import annotations

from collections.abc import Callable

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from distree.runtime.security import TLSFiles, add_port, make_server

HealthServicer = health.aio.HealthServicer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

__all__ = ["NOT_SERVING", "SERVING", "HealthServicer", "set_health", "start_server"]


async def set_health(servicer: HealthServicer, status: int) -> None:
    """Set the overall status ("") of a server."""
    await servicer.set("", status)


async def start_server(
    register: Callable[[aio.Server], None], listen: str, token: str | None, tls: TLSFiles
) -> tuple[aio.Server, HealthServicer, int]:
    """Start a server with the health service (NOT_SERVING for now) and the services
    ``register`` adds; returns (server, health servicer, bound port)."""
    server = make_server(token)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    register(server)
    await set_health(health_servicer, NOT_SERVING)
    port = add_port(server, listen, tls)
    await server.start()
    return server, health_servicer, port
