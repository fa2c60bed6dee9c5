"""The standard gRPC health service, asyncio flavour."""

from __future__ import annotations

from grpc_health.v1 import health, health_pb2

HealthServicer = health.aio.HealthServicer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

__all__ = ["NOT_SERVING", "SERVING", "HealthServicer", "set_health"]


async def set_health(servicer: HealthServicer, status: int) -> None:
    """Set the overall status ("") of a server."""
    await servicer.set("", status)
