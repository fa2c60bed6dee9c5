"""Optional OpenTelemetry tracing of a worker's or coordinator's gRPC calls
(``--trace otlp|console``, ``pip install 'distree[tracing]'``).

Server and client calls are traced by OpenTelemetry's gRPC instrumentation, the trace
context carried in the calls' metadata: an application's ``Infer`` span is the parent of
the coordinator's span for it, and the coordinator's calls to a worker (``Info`` on each connection attempt)
are parents of the worker's. The stages themselves travel on one long-lived ``Session``
stream per worker, whose span covers the session rather than a group: per group, the
``group_id`` in the debug logs ties the hops together.
"""

from __future__ import annotations

TRACE_EXPORTERS = ("otlp", "console")


def setup_tracing(exporter: str | None, service: str) -> None:
    """Trace this process's gRPC calls to ``exporter`` (None: no tracing). ``otlp`` sends
    to the collector in ``$OTEL_EXPORTER_OTLP_ENDPOINT`` (default localhost:4317);
    ``console`` prints each span as JSON on stdout. Call before any server or channel is
    made."""
    if exporter is None:
        return
    if exporter not in TRACE_EXPORTERS:
        raise ValueError(f"--trace must be one of {', '.join(TRACE_EXPORTERS)}, got {exporter!r}")
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
    except ImportError:
        raise ImportError("--trace needs OpenTelemetry: pip install 'distree[tracing]'") from None
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ImportError("--trace otlp needs the OTLP exporter: pip install 'distree[tracing]'") from None
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    GrpcAioInstrumentorServer().instrument()
    GrpcAioInstrumentorClient().instrument()
