"""The bare cost of gRPC (grpc.aio) here: a unary call per message vs messages on one stream.

Starts an echo server in its own process (spawn) with one unary and one bidirectional
streaming method (raw bytes, no protobuf work), then sends small messages from a client
for a few seconds each way. Prints wall time per round trip and the CPU per message of
the server and of the client (this process, gRPC's threads included). It sizes what the
runtime would save by carrying stages on one long-lived stream per worker instead of one
unary call per stage. Last, what a lockstep stage costs the coordinator in gRPC alone:
one message out and one back on each of --streams streams (one per worker), fed the way
the coordinator feeds its sessions (an async generator per stream).

Usage: python bench/runtime/grpc_unary_vs_stream.py [--seconds 4] [--bytes 256] [--streams 4]
       [--option grpc.http2.bdp_probe=0 ...]

``--option`` sets a gRPC channel argument (integer value) on both ends, to measure what it
changes.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time

import grpc

from distree.provenance import machine

SERVICE = "bench.Echo"


def _identity(b: bytes) -> bytes:
    return b


async def _serve(port: int, ready, options: list[tuple[str, int]]) -> None:
    async def unary(request: bytes, context) -> bytes:
        return request

    async def stream(requests, context):
        async for r in requests:
            yield r

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, _identity, _identity),
        "Stream": grpc.stream_stream_rpc_method_handler(stream, _identity, _identity),
    }
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    ready.set()
    await server.wait_for_termination()


def _server_main(port: int, ready, options: list[tuple[str, int]]) -> None:
    asyncio.run(_serve(port, ready, options))


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


async def _timed(pid: int, seconds: float, round_trip) -> str:
    """Run ``round_trip`` for ``seconds``: wall time, server CPU and client CPU per round."""
    n, cpu0, client0, t0 = 0, _cpu_s(pid), time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        await round_trip()
        n += 1
    wall, cpu = (time.perf_counter() - t0) / n * 1000, (_cpu_s(pid) - cpu0) / n * 1000
    client = (time.process_time() - client0) / n * 1000
    return f"{wall:.3f} ms round trip, {cpu:.3f} ms server CPU, {client:.3f} ms client CPU ({n} rounds)"


async def _measure(
    port: int, pid: int, seconds: float, size: int, streams: int, options: list[tuple[str, int]]
) -> None:
    payload = b"x" * size
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as ch:
        unary = ch.unary_unary(f"/{SERVICE}/Unary", _identity, _identity)

        async def unary_round() -> None:
            await unary(payload, timeout=5)

        await unary_round()
        print(f"unary call per message: {await _timed(pid, seconds, unary_round)}")

        call = ch.stream_stream(f"/{SERVICE}/Stream", _identity, _identity)(timeout=seconds * 8)

        async def stream_round() -> None:
            await call.write(payload)
            await call.read()

        await stream_round()
        print(f"one stream, per message:  {await _timed(pid, seconds, stream_round)}")
        await call.done_writing()

        queues: list[asyncio.Queue] = [asyncio.Queue() for _ in range(streams)]

        async def fed(q: asyncio.Queue):
            while (m := await q.get()) is not None:
                yield m

        calls = [
            ch.stream_stream(f"/{SERVICE}/Stream", _identity, _identity)(fed(q), timeout=seconds * 8) for q in queues
        ]

        async def fan_out_round() -> None:
            for q in queues:
                q.put_nowait(payload)
            await asyncio.gather(*(c.read() for c in calls))

        await fan_out_round()
        print(f"a message to and from each of {streams} streams: {await _timed(pid, seconds, fan_out_round)}")
        for q in queues:
            q.put_nowait(None)


def main() -> None:
    """Start the server process, measure both ways, stop it."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--bytes", type=int, default=256)
    ap.add_argument("--streams", type=int, default=4, help="streams of the fan-out round (workers)")
    ap.add_argument("--port", type=int, default=50977)
    ap.add_argument("--option", action="append", default=[], help="a gRPC channel argument KEY=INT, both ends")
    args = ap.parse_args()
    options = []
    for o in args.option:
        key, _, value = o.partition("=")
        try:
            options.append((key, int(value)))
        except ValueError:
            ap.error(f"--option {o}: expected KEY=INTEGER")
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_server_main, args=(args.port, ready, options), daemon=True)
    proc.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("echo server did not start")
        print(f"machine: {machine()}; message {args.bytes} bytes; options {options or 'none'}")
        asyncio.run(_measure(args.port, proc.pid, args.seconds, args.bytes, args.streams, options))
    finally:
        proc.terminate()
        proc.join()


if __name__ == "__main__":
    main()
