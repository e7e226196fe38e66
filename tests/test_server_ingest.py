"""The OTLP/HTTP receiver and the gRPC receiver in this process: every answer of the
table in ``decision_trace/server/ingest.py``, what is stored for each, partial success,
overload and a failing ledger, tokens. The ASGI application is called directly (no
port); the gRPC receiver listens on a free port. End-to-end tests with real exporters
and a real ``decision-trace serve`` are in tests/test_server_e2e.py."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from server_support import make_request, make_span, parse_response, request_of
from starlette.applications import Starlette

from decision_trace import attributes as keys
from decision_trace.errors import StoreError
from decision_trace.record import EventRecord
from decision_trace.server import BearerToken, create_app
from decision_trace.server._otlp import decode_request
from decision_trace.server._service import IngestService, IngestUnavailable
from decision_trace.server.grpc_ingest import start_grpc_server
from decision_trace.storage import EventFilters, Ledger, open_ledger

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
KIB = 1024


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def status_message(self) -> str:
        if self.headers.get("content-type", "").startswith(JSON):
            return str(json.loads(self.body)["message"])
        status = status_pb2.Status()
        status.ParseFromString(self.body)
        return str(status.message)


async def call(
    app: Starlette,
    body: bytes | Sequence[bytes] = b"",
    *,
    content_type: str | None = PROTOBUF,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    path: str = "/v1/traces",
    declare_length: bool = True,
    stall: bool = False,
) -> Answer:
    """One request through the ASGI interface, the body in the given chunks (then, with
    ``stall``, nothing more: the client neither sends nor closes)."""
    chunks = [body] if isinstance(body, bytes) else list(body)
    sent_headers = dict(headers or {})
    if content_type is not None:
        sent_headers["content-type"] = content_type
    if declare_length:
        sent_headers.setdefault("content-length", str(sum(len(c) for c in chunks)))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in sent_headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 4318),
    }
    pending = list(chunks)

    async def receive() -> dict[str, Any]:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": stall or bool(pending)}
        await asyncio.sleep(3600)  # the client stalls
        return {"type": "http.disconnect"}

    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start = messages[0]
    body_out = b"".join(m.get("body", b"") for m in messages[1:])
    answer_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return Answer(start["status"], answer_headers, body_out)


def run(app: Starlette, body: bytes | Sequence[bytes] = b"", **kwargs: Any) -> Answer:
    return asyncio.run(call(app, body, **kwargs))


@pytest.fixture
def ledger(request: pytest.FixtureRequest, db_path: Path) -> Iterator[Ledger]:
    """The ledger behind the app: SQLite, or each backend in a test that requests
    ``ledger_target`` (what is stored can differ by backend; how a request is answered
    cannot)."""
    target: str | Path = db_path
    if "ledger_target" in request.fixturenames:
        target = request.getfixturevalue("ledger_target")
    opened = open_ledger(target)
    yield opened
    opened.close()


BOTH_BACKENDS = pytest.mark.usefixtures("ledger_target")


@pytest.fixture
def make_app(ledger: Ledger) -> Iterator[Any]:
    """Apps on the test's ledger (the ledger object is shared, not owned)."""
    made: list[Starlette] = []

    def make(target: Ledger | None = None, **kwargs: Any) -> Starlette:
        kwargs.setdefault("token", "")
        app = create_app(target if target is not None else ledger, **kwargs)
        made.append(app)
        return app

    yield make
    for app in made:
        app.state.ingest.close()


def stored_ids(ledger: Ledger) -> set[str]:
    return {event.id for event in ledger.iter_events(EventFilters())}


def hex_ids(first: int, count: int) -> set[str]:
    return {format(i, "016x") for i in range(first, first + count)}


# --- what is accepted -------------------------------------------------------------------------


@BOTH_BACKENDS
def test_protobuf_body_is_stored_and_answered_in_protobuf(ledger: Ledger, make_app: Any) -> None:
    answer = run(make_app(), request_of(0x100, 3))
    assert answer.status == 200
    assert answer.headers["content-type"] == PROTOBUF
    assert not parse_response(answer.body).HasField("partial_success")
    assert stored_ids(ledger) == hex_ids(0x100, 3)
    event = ledger.get_event(format(0x100, "016x"))
    assert event is not None
    assert event.event_type == "GET /orders"
    assert event.correlation_id == format(0x5EED, "032x")
    assert event.actor is not None and event.actor.id == "checkout"  # service.name


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "x-gzip"])
def test_compressed_bodies(ledger: Ledger, make_app: Any, encoding: str) -> None:
    raw = request_of(0x200, 4)
    body = zlib.compress(raw) if encoding == "deflate" else gzip.compress(raw)
    # In small chunks: the decompressor is fed as the body arrives.
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]
    answer = run(make_app(), chunks, headers={"content-encoding": encoding})
    assert answer.status == 200, answer.status_message()
    assert stored_ids(ledger) == hex_ids(0x200, 4)


def test_concatenated_gzip_members_are_one_body(ledger: Ledger, make_app: Any) -> None:
    raw = request_of(0x280, 2)
    body = gzip.compress(raw[:10]) + gzip.compress(raw[10:])
    answer = run(make_app(), body, headers={"content-encoding": "gzip"})
    assert answer.status == 200, answer.status_message()
    assert stored_ids(ledger) == hex_ids(0x280, 2)


def test_a_body_without_content_length_is_read_as_it_streams(ledger: Ledger, make_app: Any) -> None:
    body = request_of(0x2C0, 5)
    answer = run(make_app(), [body[:3], body[3:50], body[50:]], declare_length=False)
    assert answer.status == 200
    assert stored_ids(ledger) == hex_ids(0x2C0, 5)


@BOTH_BACKENDS
def test_otlp_json_with_hex_ids_camel_case_and_enum_names(ledger: Ledger, make_app: Any) -> None:
    document = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "shop"}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "manual"},
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "parentSpanId": "eee19b7ec3c1b173",
                                "name": "order.refunded",
                                "kind": "SPAN_KIND_INTERNAL",
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": 1544712661000000000,
                                "attributes": [
                                    {
                                        "key": keys.EVENT_TYPE,
                                        "value": {"stringValue": "order.refunded"},
                                    },
                                    {"key": keys.DESCRIPTION, "value": {"stringValue": "Refund"}},
                                    {"key": keys.CONFIDENCE, "value": {"doubleValue": 0.75}},
                                ],
                                "status": {"code": 2, "message": "card declined"},
                                "someFutureField": {"ignored": True},
                            },
                            {
                                # proto field names are accepted too
                                "trace_id": "5b8efff798038103d269b633813fc60c",
                                "span_id": "eee19b7ec3c1b175",
                                "name": "snake",
                                "start_time_unix_nano": "1544712660000000001",
                                "end_time_unix_nano": "1544712660000000002",
                                "kind": 2,
                            },
                        ],
                    }
                ],
            }
        ]
    }
    answer = run(make_app(), json.dumps(document).encode(), content_type=f"{JSON}; charset=utf-8")
    assert answer.status == 200, answer.status_message()
    assert answer.headers["content-type"] == JSON
    assert json.loads(answer.body) == {}
    assert stored_ids(ledger) == {"eee19b7ec3c1b174", "eee19b7ec3c1b175"}
    event = ledger.get_event("eee19b7ec3c1b174")
    assert event is not None
    assert event.event_type == "order.refunded"
    assert event.description == "Refund"
    assert event.parent_event_id == "eee19b7ec3c1b173"
    assert event.decision is not None and event.decision.confidence == 0.75
    assert event.outcome.value == "failure"
    assert event.error == "card declined"


@BOTH_BACKENDS
def test_the_same_span_twice_is_stored_once(ledger: Ledger, make_app: Any) -> None:
    app = make_app()
    body = request_of(0x300, 3)
    assert run(app, body).status == 200
    assert run(app, body).status == 200
    assert run(app, request_of(0x301, 3)).status == 200  # overlaps by two
    assert stored_ids(ledger) == hex_ids(0x300, 4)
    assert ledger.count(EventFilters()) == 4


# --- partial success ----------------------------------------------------------------------------


@BOTH_BACKENDS
def test_spans_that_cannot_be_stored_are_a_partial_success(ledger: Ledger, make_app: Any) -> None:
    spans = [
        make_span(0x400),
        make_span(0, raw_span_id=b"\x01\x02"),  # wrong size
        make_span(0),  # all zeros
        make_span(0x401, start_ns=2**63),  # beyond what a ledger holds
        make_span(  # the ledger refuses it: its context is not JSON
            0x402, attributes={keys.EVENT_TYPE: "order.refunded", keys.CONTEXT: "[unclosed"}
        ),
        make_span(0x403),
    ]
    body = bytes(make_request(spans).SerializeToString())
    answer = run(make_app(), body)
    assert answer.status == 200
    partial = parse_response(answer.body).partial_success
    assert partial.rejected_spans == 4
    assert "4 span(s) not stored" in partial.error_message
    assert "0102: span_id must be 8 bytes" in partial.error_message
    assert "0000000000000402: the ledger cannot store this span" in partial.error_message
    assert stored_ids(ledger) == {format(0x400, "016x"), format(0x403, "016x")}


def test_partial_success_in_json(ledger: Ledger, make_app: Any) -> None:
    document = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {"traceId": "00" * 16, "spanId": "01" * 8, "name": "zero trace"},
                            {"traceId": "ab" * 16, "spanId": "02" * 8, "name": "fine"},
                        ]
                    }
                ]
            }
        ]
    }
    answer = run(make_app(), json.dumps(document).encode(), content_type=JSON)
    assert answer.status == 200
    partial = json.loads(answer.body)["partialSuccess"]
    assert partial["rejectedSpans"] == "1"  # int64 in the protobuf JSON mapping
    assert "trace_id is all zeros" in partial["errorMessage"]
    assert stored_ids(ledger) == {"02" * 8}


# --- what is refused --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"\xff\xfe garbage \x00\x01", PROTOBUF, 400, "not an OTLP ExportTraceServiceRequest"),
        (request_of(0x500, 3)[:-5], PROTOBUF, 400, "not an OTLP ExportTraceServiceRequest"),
        (b"{not json", JSON, 400, "not JSON"),
        (b"[1, 2]", JSON, 400, "must be a JSON object"),
        (b'{"resourceSpans": 5}', JSON, 400, "not an OTLP/JSON"),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}',
            JSON,
            400,
            "traceId must be hex",
        ),
        (b"[" * 100_000 + b"]" * 100_000, JSON, 400, "not JSON"),
        (request_of(0x500, 1), "text/plain", 415, "unsupported content type 'text/plain'"),
        (request_of(0x500, 1), "application/protobuf", 415, "unsupported content type"),
        (request_of(0x500, 1), None, 415, "unsupported content type '(none)'"),
    ],
    ids=[
        "garbage",
        "truncated",
        "bad-json",
        "json-array",
        "json-wrong-shape",
        "json-non-hex-id",
        "json-deep",
        "text",
        "protobuf-wrong-name",
        "no-type",
    ],
)
def test_malformed_bodies_and_wrong_types_are_refused(
    ledger: Ledger,
    make_app: Any,
    body: bytes,
    content_type: str | None,
    status: int,
    message: str,
) -> None:
    answer = run(make_app(), body, content_type=content_type)
    assert answer.status == status
    assert message in answer.status_message()
    assert stored_ids(ledger) == set()


def test_unknown_content_encoding_is_415(ledger: Ledger, make_app: Any) -> None:
    answer = run(make_app(), request_of(0x600, 1), headers={"content-encoding": "zstd"})
    assert answer.status == 415
    assert "unsupported content encoding 'zstd'" in answer.status_message()
    assert stored_ids(ledger) == set()


def test_a_broken_or_cut_gzip_stream_is_400(ledger: Ledger, make_app: Any) -> None:
    body = gzip.compress(request_of(0x610, 2))
    cut = run(make_app(), body[: len(body) // 2], headers={"content-encoding": "gzip"})
    assert cut.status == 400
    assert "ends before its stream does" in cut.status_message()
    broken = run(make_app(), b"\x1f\x8b" + b"\x00" * 30, headers={"content-encoding": "gzip"})
    assert broken.status == 400
    assert "compressed body is broken" in broken.status_message()
    assert stored_ids(ledger) == set()


def test_a_declared_length_over_the_limit_is_413_before_the_body_is_read(
    ledger: Ledger, make_app: Any
) -> None:
    app = make_app(max_body_bytes=64 * KIB)
    answer = run(
        app, [], headers={"content-length": str(100 * 1024 * KIB)}, declare_length=False, stall=True
    )
    # No body was ever sent (receive() stalls): the answer came first.
    assert answer.status == 413
    assert answer.headers["connection"] == "close"
    assert "over the limit of 65536 bytes" in answer.status_message()


def test_a_body_growing_past_the_limit_is_413(ledger: Ledger, make_app: Any) -> None:
    app = make_app(max_body_bytes=64 * KIB)
    chunks = [b"\x00" * (16 * KIB)] * 5 + [b"never read"]
    answer = run(app, chunks, declare_length=False)
    assert answer.status == 413
    assert answer.headers["connection"] == "close"


def test_a_gzip_bomb_is_413_without_inflating_it(ledger: Ledger, make_app: Any) -> None:
    app = make_app(max_body_bytes=64 * KIB)
    bomb = gzip.compress(b"\x00" * (10 * 1024 * KIB), compresslevel=9)  # 10 MiB in 10 KiB
    assert len(bomb) < 64 * KIB
    started = time.monotonic()
    answer = run(app, bomb, headers={"content-encoding": "gzip"})
    assert answer.status == 413
    assert "decompressed body is over the limit" in answer.status_message()
    assert time.monotonic() - started < 5
    assert stored_ids(ledger) == set()


def test_a_body_not_sent_in_time_is_408(ledger: Ledger, make_app: Any) -> None:
    app = make_app(request_timeout=0.5)
    body = request_of(0x700, 2)
    # Content-Length promises the whole body; only half arrives, then nothing.
    answer = run(
        app,
        [body[:10]],
        headers={"content-length": str(len(body))},
        declare_length=False,
        stall=True,
    )
    assert answer.status == 408
    assert answer.headers["connection"] == "close"
    assert stored_ids(ledger) == set()


def test_only_post(make_app: Any) -> None:
    assert run(make_app(), method="GET").status == 405


# --- tokens ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", "Bearer s3cret-but-longer", "Basic s3cret", "s3cret", "Bearer", ""],
)
def test_a_missing_or_wrong_token_is_401_and_nothing_is_stored(
    ledger: Ledger, make_app: Any, authorization: str | None
) -> None:
    app = make_app(token="s3cret")
    headers = {"authorization": authorization} if authorization is not None else {}
    answer = run(app, request_of(0x800, 2), headers=headers)
    assert answer.status == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert "missing or wrong bearer token" in answer.status_message()
    assert "s3cret" not in answer.body.decode("latin-1")
    assert stored_ids(ledger) == set()


def test_the_right_token_passes(ledger: Ledger, make_app: Any) -> None:
    app = make_app(token="s3cret")
    answer = run(app, request_of(0x810, 2), headers={"authorization": "bearer  s3cret "})
    assert answer.status == 200
    assert stored_ids(ledger) == hex_ids(0x810, 2)


def test_the_token_comes_from_the_environment(
    ledger: Ledger, make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DECISION_TRACE_TOKEN", "from-env")
    app = make_app(token=None)
    assert run(app, request_of(0x820, 1)).status == 401
    assert (
        run(app, request_of(0x820, 1), headers={"authorization": "Bearer from-env"}).status == 200
    )


def test_a_token_a_header_cannot_carry_is_refused() -> None:
    for token in ("has space", "ünïcode", "tab\there"):
        with pytest.raises(ValueError, match="printable ASCII"):
            BearerToken(token)
    assert "s3cret" not in repr(BearerToken("s3cret"))


# --- a ledger that cannot keep up ----------------------------------------------------------------


class SlowLedger:
    """A ledger whose writes wait for ``gate`` (or fail), delegating everything else."""

    def __init__(self, inner: Ledger) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.fail: Exception | None = None
        self.writes = 0

    def write(self, records: Sequence[EventRecord]) -> int:
        self.writes += 1
        self.gate.wait(30)
        if self.fail is not None:
            raise self.fail
        return self.inner.write(records)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_too_much_waiting_is_503_with_retry_after(ledger: Ledger) -> None:
    slow = SlowLedger(ledger)
    service = IngestService(slow, max_pending_spans=10, write_timeout=20)  # type: ignore[arg-type]
    app = create_app(ledger, token="", ingest=service)

    async def scenario() -> list[Answer]:
        first = asyncio.ensure_future(call(app, request_of(0x900, 8)))
        while service.pending_spans < 8:
            await asyncio.sleep(0.01)
        refused = await call(app, request_of(0x910, 8))  # 8 + 8 > 10
        slow.gate.set()
        return [await first, refused]

    try:
        first, refused = asyncio.run(scenario())
    finally:
        service.close()
    assert first.status == 200
    assert refused.status == 503
    assert refused.headers["retry-after"] == "1"
    assert "waiting to be written" in refused.status_message()
    assert stored_ids(ledger) == hex_ids(0x900, 8)


def test_a_write_slower_than_the_timeout_is_503_and_is_not_made_later(ledger: Ledger) -> None:
    slow = SlowLedger(ledger)
    service = IngestService(slow, write_timeout=0.3)  # type: ignore[arg-type]
    app = create_app(ledger, token="", ingest=service)

    async def scenario() -> tuple[Answer, Answer]:
        blocked = asyncio.ensure_future(call(app, request_of(0xA00, 2)))
        while slow.writes < 1:
            await asyncio.sleep(0.01)
        # The writer is busy with the first request; the second times out in the queue.
        queued = await call(app, request_of(0xA10, 2))
        return await blocked, queued

    try:
        blocked, queued = asyncio.run(scenario())
        slow.gate.set()
    finally:
        service.close()
    assert blocked.status == 503 and queued.status == 503
    assert blocked.headers["retry-after"] == "1"
    assert "did not finish the write within 0.3 s" in queued.status_message()
    # The write already under way completes; the one that timed out in the queue was
    # dropped (the client retries it).
    assert stored_ids(ledger) == hex_ids(0xA00, 2)


@pytest.mark.parametrize(
    "failure",
    [StoreError("database is locked"), RuntimeError("database is locked (a driver error)")],
    ids=["store-error", "unwrapped-error"],
)
def test_a_failing_ledger_is_503_and_one_log_line(
    ledger: Ledger, caplog: pytest.LogCaptureFixture, failure: Exception
) -> None:
    slow = SlowLedger(ledger)
    slow.gate.set()
    slow.fail = failure
    service = IngestService(slow)  # type: ignore[arg-type]
    app = create_app(ledger, token="", ingest=service)
    try:
        with caplog.at_level("INFO", logger="decision_trace.server"):
            answers = [run(app, request_of(0xB00 + i, 1)) for i in range(3)]
            slow.fail = None
            recovered = run(app, request_of(0xB10, 1))
    finally:
        service.close()
    assert [a.status for a in answers] == [503, 503, 503]
    assert answers[0].headers["retry-after"] == "5"
    assert "cannot be written now" in answers[0].status_message()
    assert recovered.status == 200
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # one when it started failing, one when it recovered
    assert "database is locked" in lines[0]
    assert "after 3 failed write(s)" in lines[1]


# --- gRPC ---------------------------------------------------------------------------------------


@pytest.fixture
def grpc_stub(ledger: Ledger) -> Iterator[Any]:
    service = IngestService(ledger)
    receiver = start_grpc_server(service, BearerToken("s3cret"), port=0, max_message_bytes=64 * KIB)
    channel = grpc.insecure_channel(f"127.0.0.1:{receiver.port}")
    try:
        yield trace_service_pb2_grpc.TraceServiceStub(channel)
    finally:
        channel.close()
        receiver.stop(None).wait(10)
        service.close()


AUTH = (("authorization", "Bearer s3cret"),)


@BOTH_BACKENDS
def test_grpc_stores_and_answers_partial_success(ledger: Ledger, grpc_stub: Any) -> None:
    spans = [make_span(0xC00), make_span(0, raw_span_id=b"\x05"), make_span(0xC01)]
    response = grpc_stub.Export(make_request(spans), metadata=AUTH, timeout=30)
    assert response.partial_success.rejected_spans == 1
    assert stored_ids(ledger) == hex_ids(0xC00, 2)
    again = grpc_stub.Export(make_request(spans[:1]), metadata=AUTH, timeout=30)
    assert not again.HasField("partial_success")
    assert ledger.count(EventFilters()) == 2


@pytest.mark.parametrize(
    "metadata", [(), (("authorization", "Bearer nope"),), (("authorization", "s3cret"),)]
)
def test_grpc_without_the_token_is_unauthenticated(
    ledger: Ledger, grpc_stub: Any, metadata: tuple[tuple[str, str], ...]
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        grpc_stub.Export(make_request([make_span(0xC10)]), metadata=metadata, timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert stored_ids(ledger) == set()


def test_grpc_message_over_the_limit_is_resource_exhausted(ledger: Ledger, grpc_stub: Any) -> None:
    spans = [make_span(0xD00 + i, name="x" * 1000) for i in range(100)]  # ~100 KiB > 64 KiB
    with pytest.raises(grpc.RpcError) as caught:
        grpc_stub.Export(make_request(spans), metadata=AUTH, timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A gzip bomb: small on the wire, over the limit once decompressed.
    with pytest.raises(grpc.RpcError) as caught:
        grpc_stub.Export(
            make_request(spans), metadata=AUTH, timeout=30, compression=grpc.Compression.Gzip
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stored_ids(ledger) == set()


def test_grpc_overload_is_retryable_with_retry_info(ledger: Ledger) -> None:
    from google.rpc.error_details_pb2 import RetryInfo

    slow = SlowLedger(ledger)
    slow.gate.set()
    slow.fail = StoreError("server closed the connection")
    service = IngestService(slow)  # type: ignore[arg-type]
    receiver = start_grpc_server(service, BearerToken(None), port=0)
    channel = grpc.insecure_channel(f"127.0.0.1:{receiver.port}")
    try:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Export(make_request([make_span(0xE00)]), timeout=30)
    finally:
        channel.close()
        receiver.stop(None).wait(10)
        service.close()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    trailing = dict(caught.value.trailing_metadata())
    retry = RetryInfo()
    retry.ParseFromString(trailing["google.rpc.retryinfo-bin"])
    assert retry.retry_delay.seconds == 5


# --- the application factory --------------------------------------------------------------------


async def lifespan(app: Starlette) -> list[str]:
    """Run the app's lifespan: startup, then shutdown; the message types sent back."""
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return sent


def test_a_ledger_the_app_opened_is_closed_at_shutdown_after_its_writes(db_path: Path) -> None:
    app = create_app(str(db_path), token="")
    assert run(app, request_of(0xF00, 3)).status == 200
    assert asyncio.run(lifespan(app)) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    with pytest.raises(StoreError, match="closed"):
        app.state.ledger.count(EventFilters())
    with pytest.raises(IngestUnavailable, match="shutting down"):
        app.state.ingest.submit(decode_request(make_request([make_span(0xF01)])))
    reopened = open_ledger(db_path)
    try:
        assert stored_ids(reopened) == hex_ids(0xF00, 3)
    finally:
        reopened.close()


def test_a_ledger_given_to_the_app_stays_open(ledger: Ledger) -> None:
    app = create_app(ledger, token="")
    asyncio.run(lifespan(app))
    assert ledger.count(EventFilters()) == 0  # still usable


def test_the_read_api_shares_the_ledger_and_the_token_with_ingest(ledger: Ledger) -> None:
    app = create_app(ledger, token="s3cret")
    try:
        auth = {"authorization": "Bearer s3cret"}
        assert run(app, request_of(0xF10, 2), headers=auth).status == 200
        count = "/api/v1/events/count"
        denied = run(app, method="GET", path=count, content_type=None)
        assert denied.status == 401
        assert json.loads(denied.body) == {"status": 401, "error": "missing or wrong bearer token"}
        answer = run(app, method="GET", path=count, content_type=None, headers=auth)
        assert answer.status == 200
        assert json.loads(answer.body)["count"] == 2
        assert run(app, method="GET", path="/healthz", content_type=None).status == 200
    finally:
        app.state.ingest.close()
