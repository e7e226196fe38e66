"""OTLP/gRPC trace ingest: ``opentelemetry.proto.collector.trace.v1.TraceService/Export``
on its own port (4317 by default), with the semantics of ``POST /v1/traces``.

==========================================  ==========================================
request                                     status
==========================================  ==========================================
no or a wrong ``authorization: Bearer``     ``UNAUTHENTICATED``; nothing is stored
metadata (when the service has a token)
a message (decompressed) over the limit     ``RESOURCE_EXHAUSTED`` (from gRPC itself)
too much waiting to be written; more RPCs   ``RESOURCE_EXHAUSTED`` with a
than the server takes at once               ``google.rpc.RetryInfo`` delay (the first)
the ledger failing or slower than the       ``UNAVAILABLE`` with a ``RetryInfo`` delay
write timeout
otherwise                                   ``OK`` with an ``ExportTraceServiceResponse``
                                            (``partial_success`` for spans not stored)
==========================================  ==========================================

The OpenTelemetry gRPC exporters retry ``UNAVAILABLE`` and ``RESOURCE_EXHAUSTED`` after
the ``RetryInfo`` delay. The decoding and the writing are the HTTP receiver's
(:class:`~decision_trace.server._service.IngestService`).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from ._auth import BearerToken
from ._otlp import export_response
from ._service import IngestService, IngestUnavailable

__all__ = ["GrpcReceiver", "TraceIngestServicer", "start_grpc_server"]

logger = logging.getLogger("decision_trace.server")

_RETRY_INFO_KEY = "google.rpc.retryinfo-bin"


class TraceIngestServicer(trace_service_pb2_grpc.TraceServiceServicer):
    """The ``TraceService`` implementation.

    Args:
        service: Decodes and writes the spans (shared with the HTTP receiver).
        token_check: Checks the ``authorization`` metadata.
    """

    def __init__(self, service: IngestService, token_check: BearerToken) -> None:
        self._service = service
        self._token = token_check

    def Export(
        self, request: ExportTraceServiceRequest, context: Any
    ) -> ExportTraceServiceResponse:
        """Store the request's spans; answer as the module docs say."""
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value
        if not self._token.check_header(authorization):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        try:
            _, rejected = self._service.export(request)
        except IngestUnavailable as exc:
            retry = RetryInfo(retry_delay=Duration(seconds=exc.retry_after))
            context.set_trailing_metadata(((_RETRY_INFO_KEY, retry.SerializeToString()),))
            code = (
                grpc.StatusCode.RESOURCE_EXHAUSTED
                if exc.overloaded
                else grpc.StatusCode.UNAVAILABLE
            )
            context.abort(code, str(exc))
        except Exception as exc:  # a bug: one line, and an answer
            logger.error(
                "unexpected error answering a gRPC export: %s: %s", type(exc).__name__, exc
            )
            context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server's log")
        return export_response(rejected)


class GrpcReceiver:
    """A running gRPC server and the port it listens on."""

    def __init__(self, server: Any, host: str, port: int) -> None:
        self.server = server
        self.host = host
        self.port = port

    def stop(self, grace: float | None) -> Any:
        """Stop taking RPCs now; those running get ``grace`` seconds. Returns a
        ``threading.Event`` set once everything has stopped."""
        return self.server.stop(grace)


def start_grpc_server(
    service: IngestService,
    token_check: BearerToken,
    *,
    host: str = "127.0.0.1",
    port: int = 4317,
    max_message_bytes: int = 16 * 1024 * 1024,
    max_workers: int = 16,
    max_concurrent_rpcs: int = 256,
    credentials: Any = None,
) -> GrpcReceiver:
    """Start the OTLP/gRPC receiver on ``host:port`` (0: any free port).

    Args:
        service: Decodes and writes the spans.
        token_check: Checks each RPC's ``authorization`` metadata.
        host: Address to listen on.
        port: Port to listen on; 0 picks a free one (see :attr:`GrpcReceiver.port`).
        max_message_bytes: Largest request message, after decompression.
        max_workers: Threads answering RPCs.
        max_concurrent_rpcs: RPCs taken at once; more are answered
            ``RESOURCE_EXHAUSTED``.
        credentials: ``grpc.ssl_server_credentials(...)`` for TLS; None for plain text.

    Raises:
        OSError: the address cannot be listened on.
    """
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="decision-trace-grpc"),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        TraceIngestServicer(service, token_check), server
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if credentials is not None:
            bound = server.add_secure_port(address, credentials)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address} (gRPC): {exc}") from None
    if not bound:
        raise OSError(f"cannot listen on {address} (gRPC)")
    server.start()
    return GrpcReceiver(server, host, bound)
