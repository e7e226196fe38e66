"""OTLP export to real receivers started in the test (HTTP/protobuf and gRPC).

The receivers decode what arrives with the official ``opentelemetry-proto`` messages and
check what a collector would see: ``service.name``, span ids equal to event ids, the
reasoning, ``user.*`` on users, ``gen_ai.*`` on AI agents, no deprecated keys. Also:
headers, compression and TLS come from the standard environment variables, and an
unreachable collector neither slows ``record()`` much nor touches the ledger. On every
backend.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from otlp_receiver import Received, Receiver, http_server, serve

from decision_trace import DecisionTraceClient
from decision_trace import attributes as keys
from decision_trace.errors import InvalidInputError

pytestmark = pytest.mark.usefixtures("ledger_target")

MakeClient = Callable[..., DecisionTraceClient]

DEPRECATED_KEYS = {"enduser.id", "enduser.role", "enduser.scope", "gen_ai.system", "peer.service"}


@pytest.fixture
def http_receiver() -> Iterator[Receiver]:
    """An OTLP/HTTP receiver on 127.0.0.1; ``endpoint`` is its base URL."""
    received: list[Received] = []
    server = http_server(received)
    port = server.server_address[1]
    with serve(server):
        yield Receiver(f"http://127.0.0.1:{port}", received)


@pytest.fixture
def grpc_receiver() -> Iterator[Receiver]:
    """An OTLP/gRPC receiver on 127.0.0.1 (insecure)."""
    received: list[Received] = []

    class Servicer(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
        def Export(self, request: Any, context: Any) -> Any:
            metadata = {k.lower(): v for k, v in context.invocation_metadata()}
            received.append(Received("grpc", metadata, request))
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield Receiver(f"http://127.0.0.1:{port}", received)
    finally:
        server.stop(grace=None).wait(10)


def _closed_port() -> int:
    """A localhost port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _record_examples(client: DecisionTraceClient) -> dict[str, str]:
    """One decision per kind of actor; returns event ids by kind."""
    return {
        "user": client.trace("refund.approved", "Refund approved")
        .by_user("u-42", "Sam Support", email="sam@example.com", role="support")
        .affecting_order("ord-1", {"status": "refunded"})
        .because("Item arrived broken", context={"defect": "screen"})
        .with_tags("refund")
        .record(),
        "agent": client.trace("price.changed", "Price lowered")
        .by_ai_agent("pricing-ai", "Dynamic Pricing", model="gpt-4", version="2.1")
        .affecting_product("SKU-1", state_before={"price": 10}, state_after={"price": 9})
        .because("Competitor dropped price", confidence=0.9, risk_level="low")
        .record(),
        "external": client.trace("payment.captured", "Captured")
        .by_external("stripe", "Stripe", service_name="api.stripe.com")
        .record(),
        "compute": client.trace("inventory.synced", "Synced")
        .by_compute("sync-job", "Inventory Sync", service_name="warehouse", version="3")
        .record(),
    }


def _assert_what_a_collector_sees(
    receiver: Receiver, client: DecisionTraceClient, ids: dict[str, str], service: str
) -> None:
    spans = receiver.by_id()
    assert set(spans) == set(ids.values())  # span ids == event ids
    for event_id, span in spans.items():
        event = client.get_event(event_id)
        assert event is not None
        assert span.trace_id == event.correlation_id
        assert span.service_name == service == event.service_name
        assert span.scope == "decision_trace"
        assert span.name == event.event_type
        assert span.attributes[keys.EVENT_TYPE] == event.event_type
        assert not DEPRECATED_KEYS & set(span.attributes)

    user = spans[ids["user"]].attributes
    assert user[keys.REASONING] == "Item arrived broken"
    assert user[keys.USER_ID] == "u-42"
    assert user[keys.USER_NAME] == "Sam Support"
    assert user[keys.USER_EMAIL] == "sam@example.com"
    assert user[keys.USER_ROLES] == ["support"]
    assert user[keys.ACTOR_TYPE] == "user"
    assert user[keys.OBJECT_IDS] == ["ord-1"]
    assert user[keys.TAGS] == ["refund"]
    assert not any(key.startswith("gen_ai.") for key in user)

    agent = spans[ids["agent"]].attributes
    assert agent[keys.REASONING] == "Competitor dropped price"
    assert agent[keys.GEN_AI_OPERATION_NAME] == "invoke_agent"
    assert agent[keys.GEN_AI_AGENT_ID] == "pricing-ai"
    assert agent[keys.GEN_AI_AGENT_NAME] == "Dynamic Pricing"
    assert agent[keys.GEN_AI_AGENT_VERSION] == "2.1"
    assert agent[keys.GEN_AI_REQUEST_MODEL] == "gpt-4"
    assert agent[keys.CONFIDENCE] == pytest.approx(0.9)
    assert not any(key.startswith("user.") for key in agent)

    external = spans[ids["external"]].attributes
    assert external[keys.SERVICE_PEER_NAME] == "api.stripe.com"
    assert external[keys.ACTOR_ID] == "stripe"

    compute = spans[ids["compute"]].attributes
    assert compute[keys.ACTOR_SERVICE_NAME] == "warehouse"
    assert keys.SERVICE_PEER_NAME not in compute


# -- OTLP/HTTP ---------------------------------------------------------------------------------


def test_http_export_from_environment(
    make_client: MakeClient, http_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", http_receiver.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout")
    client = make_client()
    ids = _record_examples(client)
    assert client.flush()
    assert {r.path for r in http_receiver.received} == {"/v1/traces"}
    assert {r.headers["content-type"] for r in http_receiver.received} == {"application/x-protobuf"}
    _assert_what_a_collector_sees(http_receiver, client, ids, "checkout")


def test_http_export_from_arguments(make_client: MakeClient, http_receiver: Receiver) -> None:
    client = make_client(otlp_endpoint=http_receiver.endpoint, service_name="pricing")
    ids = _record_examples(client)
    assert client.flush()
    _assert_what_a_collector_sees(http_receiver, client, ids, "pricing")


def test_traces_endpoint_env_is_used_as_given(
    make_client: MakeClient, http_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{http_receiver.endpoint}/custom")
    client = make_client()
    event_id = client.trace("order.created", "Created").record()
    client.close()
    assert [r.path for r in http_receiver.received] == ["/custom"]
    assert set(http_receiver.by_id()) == {event_id}


def test_headers_and_compression_come_from_standard_env(
    make_client: MakeClient, http_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", http_receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=shop-1,authorization=Bearer%20abc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    client = make_client()
    event_id = client.trace("order.created", "Created").record()
    client.close()
    (request,) = http_receiver.received
    assert request.headers["x-tenant"] == "shop-1"
    assert request.headers["authorization"] == "Bearer abc"
    assert request.headers["content-encoding"] == "gzip"
    assert set(http_receiver.by_id()) == {event_id}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_certificate_comes_from_standard_env(
    make_client: MakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override the exporter's CA file.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    received: list[Received] = []
    server = http_server(received, tls)
    port = server.server_address[1]
    with serve(server):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"https://127.0.0.1:{port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(cert))
        client = make_client()
        event_id = client.trace("order.created", "Created").record()
        client.close()
    spans = Receiver("", received).by_id()
    assert set(spans) == {event_id}


def test_unsampled_parent_keeps_decision_out_of_otlp_not_ledger(
    make_client: MakeClient, http_receiver: Receiver
) -> None:
    client = make_client(otlp_endpoint=http_receiver.endpoint)
    unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    hidden = client.trace("order.created", "Hidden").child_of(unsampled).record()
    shown = client.trace("order.created", "Shown").child_of(sampled).record()
    client.close()
    assert set(http_receiver.by_id()) == {shown}
    with DecisionTraceClient(db_path=client.db_path) as reader:
        assert {e.id for e in reader.query(limit=None)} == {hidden, shown}


def test_no_endpoint_means_no_export(make_client: MakeClient) -> None:
    # The exporters' default endpoint is localhost:4318: listen there and see nothing arrive.
    received: list[Received] = []
    try:
        server = http_server(received)
        server.server_close()
        server = ThreadingHTTPServer(("127.0.0.1", 4318), server.RequestHandlerClass)
    except OSError:
        pytest.skip("port 4318 is in use")
    with serve(server):
        client = make_client()
        event_id = client.trace("order.created", "Created").record()
        client.close()
    assert received == []
    with DecisionTraceClient(db_path=client.db_path) as reader:
        assert reader.get_event(event_id) is not None


def test_sdk_disabled_turns_otlp_off_but_not_the_ledger(
    make_client: MakeClient, http_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", http_receiver.endpoint)
    client = make_client(otlp_endpoint=http_receiver.endpoint)
    event_id = client.trace("order.created", "Created").record()
    assert client.get_event(event_id) is not None
    client.close()
    assert http_receiver.received == []


def test_unknown_protocol_is_a_clear_error(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(InvalidInputError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        make_client()


# -- OTLP/gRPC ---------------------------------------------------------------------------------


def test_grpc_export_from_environment(
    make_client: MakeClient, grpc_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", grpc_receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=shop-1")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout")
    client = make_client()
    ids = _record_examples(client)
    assert client.flush()
    assert {r.headers.get("x-tenant") for r in grpc_receiver.received} == {"shop-1"}
    _assert_what_a_collector_sees(grpc_receiver, client, ids, "checkout")


def test_grpc_export_from_argument(
    make_client: MakeClient, grpc_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    client = make_client(otlp_endpoint=grpc_receiver.endpoint, service_name="pricing")
    ids = _record_examples(client)
    client.close()
    assert set(grpc_receiver.by_id()) == set(ids.values())


# -- an unreachable collector ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "timeout"),
    [("http/protobuf", None), ("grpc", None), ("http/protobuf", "1")],
    ids=["http-default-timeout", "grpc-default-timeout", "http-timeout-env"],
)
def test_unreachable_collector_does_not_block_or_lose_decisions(
    make_client: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
    protocol: str,
    timeout: str | None,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    if timeout is not None:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", timeout)
    client = make_client()
    started = time.monotonic()
    ids = [
        client.trace("order.created", f"Order {i}").by_user(f"u-{i}").record() for i in range(300)
    ]
    recording = time.monotonic() - started
    # Correctness bounds, not a benchmark: export happens on a background thread.
    assert recording < 5.0
    started = time.monotonic()
    client.close()
    closing = time.monotonic() - started
    assert closing < 15.0
    with DecisionTraceClient(db_path=client.db_path) as reader:
        assert {e.id for e in reader.query(limit=None)} == set(ids)
        assert reader.stats().failed == 0


def test_grpc_insecure_env_for_an_endpoint_without_scheme(
    make_client: MakeClient, grpc_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_ENDPOINT", grpc_receiver.endpoint.removeprefix("http://")
    )
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    client = make_client()
    event_id = client.trace("order.created", "Created").record()
    client.close()
    assert set(grpc_receiver.by_id()) == {event_id}
