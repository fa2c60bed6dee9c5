"""The bare cost of gRPC (grpc.aio) here: a unary call per message vs messages on one stream.

Starts an echo server in its own process (spawn) with one unary and one bidirectional
streaming method (raw bytes, no protobuf work), then sends small messages from a client
for a few seconds each way. Prints wall time per round trip and server CPU per message.
It sizes what the runtime would save by carrying stages on one long-lived stream per
worker instead of one unary call per stage.

Usage: python bench/grpc_unary_vs_stream.py [--seconds 4] [--bytes 256]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import time

import grpc

SERVICE = "bench.Echo"


def _identity(b: bytes) -> bytes:
    return b


async def _serve(port: int, ready) -> None:
    async def unary(request: bytes, context) -> bytes:
        return request

    async def stream(requests, context):
        async for r in requests:
            yield r

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, _identity, _identity),
        "Stream": grpc.stream_stream_rpc_method_handler(stream, _identity, _identity),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    ready.set()
    await server.wait_for_termination()


def _server_main(port: int, ready) -> None:
    asyncio.run(_serve(port, ready))


def _cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


async def _measure(port: int, pid: int, seconds: float, size: int) -> None:
    payload = b"x" * size
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        unary = ch.unary_unary(f"/{SERVICE}/Unary", _identity, _identity)
        await unary(payload, timeout=5)
        n, cpu0, t0 = 0, _cpu_s(pid), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            await unary(payload, timeout=5)
            n += 1
        wall, cpu = (time.perf_counter() - t0) / n * 1000, (_cpu_s(pid) - cpu0) / n * 1000
        print(f"unary call per message: {wall:.3f} ms round trip, {cpu:.3f} ms server CPU ({n} messages)")

        call = ch.stream_stream(f"/{SERVICE}/Stream", _identity, _identity)(timeout=seconds * 4)
        await call.write(payload)
        await call.read()
        n, cpu0, t0 = 0, _cpu_s(pid), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            await call.write(payload)
            await call.read()
            n += 1
        wall, cpu = (time.perf_counter() - t0) / n * 1000, (_cpu_s(pid) - cpu0) / n * 1000
        await call.done_writing()
        print(f"one stream, per message:  {wall:.3f} ms round trip, {cpu:.3f} ms server CPU ({n} messages)")


def main() -> None:
    """Start the server process, measure both ways, stop it."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--bytes", type=int, default=256)
    ap.add_argument("--port", type=int, default=50977)
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_server_main, args=(args.port, ready), daemon=True)
    proc.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("echo server did not start")
        print(f"machine: {os.cpu_count()} CPUs; message {args.bytes} bytes")
        asyncio.run(_measure(args.port, proc.pid, args.seconds, args.bytes))
    finally:
        proc.terminate()
        proc.join()


if __name__ == "__main__":
    main()
