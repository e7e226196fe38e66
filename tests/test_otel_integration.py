"""decision-trace inside an application that already uses OpenTelemetry.

Nesting under the application's current span (global SDK provider, the application's
own provider, no SDK at all), sampling (every decision reaches the ledger; export and the
sampled flag follow the application), and W3C ``traceparent`` in and out; on every
backend.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from decision_trace import DecisionTraceClient
from decision_trace import attributes as keys
from decision_trace.errors import InvalidInputError
from decision_trace.storage import is_url

pytestmark = pytest.mark.usefixtures("ledger_target")

MakeClient = Callable[..., DecisionTraceClient]

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
UNSAMPLED_PARENT = f"00-{TRACE_ID}-{PARENT_ID}-00"
SAMPLED_PARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def _app_provider(sampler: Sampler) -> tuple[TracerProvider, InMemorySpanExporter]:
    """An application's own provider (never the global one) with an in-memory exporter."""
    exported = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return provider, exported


@pytest.fixture
def other_ledger_target(
    request: pytest.FixtureRequest, ledger_target: str, tmp_path: Path
) -> Iterator[str]:
    """Another service's ledger, separate from ``ledger_target``, on the same backend."""
    if not is_url(ledger_target):
        yield str(tmp_path / "other.db")
        return
    with request.getfixturevalue("pg_server").schema() as schema:
        yield schema.url


@pytest.fixture
def collector() -> InMemorySpanExporter:
    """Stands in for a collector: an extra exporter, batched like the OTLP one."""
    return InMemorySpanExporter()


def _exported_ids(client: DecisionTraceClient, collector: InMemorySpanExporter) -> set[str]:
    assert client.flush()
    return {format(span.context.span_id, "016x") for span in collector.get_finished_spans()}


@contextmanager
def _remote_parent(traceparent: str) -> Iterator[None]:
    """Make an upstream service's traceparent current, as a server middleware does."""
    token = otel_context.attach(
        TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    )
    try:
        yield
    finally:
        otel_context.detach(token)


def _hex_ids(span: otel_trace.Span) -> tuple[str, str]:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


# -- nesting -------------------------------------------------------------------------------


def test_decision_nests_under_a_span_of_the_apps_own_provider(make_client: MakeClient) -> None:
    client = make_client()
    provider, app_exported = _app_provider(ALWAYS_ON)
    tracer = provider.get_tracer("shop")
    with tracer.start_as_current_span("POST /refunds") as request:
        event_id = (
            client.trace("refund.approved", "Refund approved")
            .by_user("u-1", "Sam")
            .because("Item arrived broken")
            .record()
        )
    trace_id, request_id = _hex_ids(request)
    event = client.get_event(event_id)
    assert event is not None
    assert event.correlation_id == trace_id
    assert event.parent_event_id == request_id
    # The app's span is the app's: it is not written to the ledger by the client.
    assert client.get_event(request_id) is None
    assert [s.name for s in app_exported.get_finished_spans()] == ["POST /refunds"]


def test_app_spans_inside_a_decision_span_are_its_children(make_client: MakeClient) -> None:
    client = make_client()
    provider, app_exported = _app_provider(ParentBased(ALWAYS_ON))
    tracer = provider.get_tracer("shop")
    with client.span("order.fulfilment", "Fulfil order") as trace:
        trace.by_system("fulfilment-engine")
        with tracer.start_as_current_span("reserve-stock"):
            inner_id = client.trace("inventory.reserved", "Reserved").record()
    (app_span,) = app_exported.get_finished_spans()
    assert app_span.parent is not None
    assert format(app_span.parent.span_id, "016x") == trace.event_id
    inner = client.get_event(inner_id)
    assert inner is not None
    assert inner.parent_event_id == format(app_span.context.span_id, "016x")
    outer = client.get_event(trace.event_id or "")
    assert outer is not None
    assert inner.correlation_id == outer.correlation_id
    # The app's span between them is not in the ledger, so the stored chain starts at
    # the inner event (store app spans too with the decision_trace exporter).
    assert client.get_chain(inner_id).event.id == inner_id


def test_without_an_sdk_a_decision_is_a_root(make_client: MakeClient) -> None:
    # No SDK in the app: the API's tracer makes non-recording spans with no ids.
    assert not isinstance(otel_trace.get_tracer_provider(), TracerProvider)
    client = make_client()
    with otel_trace.get_tracer("no-sdk-app").start_as_current_span("request"):
        event_id = client.trace("order.created", "Created").record()
    event = client.get_event(event_id)
    assert event is not None
    assert event.parent_event_id is None
    assert len(event.correlation_id) == 32
    assert event.correlation_id != "0" * 32


_GLOBAL_PROVIDER_APP = textwrap.dedent(
    """
    import json, sys
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
    from decision_trace import DecisionTraceClient

    sampler = {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF}[sys.argv[2]]
    trace.set_tracer_provider(TracerProvider(sampler=sampler))
    collector = InMemorySpanExporter()
    client = DecisionTraceClient(db_path=sys.argv[1], exporters=[collector])
    tracer = trace.get_tracer("shop")
    with tracer.start_as_current_span("GET /checkout") as request:
        nested = client.trace("order.created", "Created").by_system("checkout").record()
    root = client.trace("job.finished", "Nightly job").by_compute("cron").record()
    ctx = request.get_span_context()
    client.flush()
    exported = [format(s.context.span_id, "016x") for s in collector.get_finished_spans()]
    events = {e.id: [e.correlation_id, e.parent_event_id] for e in client.query(limit=None)}
    client.close()
    print(json.dumps({
        "trace_id": format(ctx.trace_id, "032x"),
        "request_id": format(ctx.span_id, "016x"),
        "nested": nested, "root": root, "events": events, "exported": exported,
    }))
    """
)


@pytest.mark.parametrize("sampler", ["always_on", "always_off"])
def test_decision_nests_under_a_span_of_the_global_sdk_provider(
    tmp_path: Path, ledger_target: str, sampler: str
) -> None:
    script = tmp_path / "app.py"
    script.write_text(_GLOBAL_PROVIDER_APP)
    done = subprocess.run(
        [sys.executable, str(script), ledger_target, sampler],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    events = out["events"]
    assert events[out["nested"]] == [out["trace_id"], out["request_id"]]
    assert events[out["root"]][1] is None
    if sampler == "always_on":
        assert set(out["exported"]) == {out["nested"], out["root"]}
    else:
        # The app samples nothing: both decisions are in the ledger, neither is exported
        # (a root decision asks the global provider's sampler).
        assert out["exported"] == []


# -- sampling --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sampler",
    [TraceIdRatioBased(0.0), ALWAYS_OFF, ParentBased(ALWAYS_OFF)],
    ids=["ratio-0", "always_off", "parentbased_always_off"],
)
def test_unsampled_app_span_keeps_decision_in_ledger_not_in_export(
    make_client: MakeClient, collector: InMemorySpanExporter, sampler: Sampler
) -> None:
    client = make_client(exporters=[collector])
    provider, app_exported = _app_provider(sampler)
    with provider.get_tracer("shop").start_as_current_span("POST /checkout") as request:
        assert not request.get_span_context().trace_flags.sampled
        event_id = client.trace("order.created", "Created").by_user("u-1").record()
    trace_id, request_id = _hex_ids(request)
    event = client.get_event(event_id)
    assert event is not None
    assert (event.correlation_id, event.parent_event_id) == (trace_id, request_id)
    assert _exported_ids(client, collector) == set()
    assert app_exported.get_finished_spans() == ()


@pytest.mark.parametrize("durability", ["batch", "sync"])
def test_parentbased_under_unsampled_remote_parent(
    make_client: MakeClient, collector: InMemorySpanExporter, durability: str
) -> None:
    client = make_client(exporters=[collector], durability=durability)
    provider, _ = _app_provider(ParentBased(ALWAYS_ON))
    with (
        _remote_parent(UNSAMPLED_PARENT),
        provider.get_tracer("shop").start_as_current_span("handler") as handler,
    ):
        assert not handler.get_span_context().trace_flags.sampled
        event_id = client.trace("refund.approved", "Approved").record()
    event = client.get_event(event_id)
    assert event is not None
    assert event.correlation_id == TRACE_ID
    assert event.parent_event_id == _hex_ids(handler)[1]
    assert _exported_ids(client, collector) == set()


def test_sampled_app_span_exports_the_decision(
    make_client: MakeClient, collector: InMemorySpanExporter
) -> None:
    client = make_client(exporters=[collector])
    provider, _ = _app_provider(ParentBased(ALWAYS_ON))
    with provider.get_tracer("shop").start_as_current_span("POST /checkout"):
        event_id = client.trace("order.created", "Created").record()
    root_id = client.trace("job.done", "Root, no app sampler anywhere").record()
    assert _exported_ids(client, collector) == {event_id, root_id}


@pytest.mark.parametrize(
    ("env", "exported"),
    [
        ({"OTEL_TRACES_SAMPLER": "always_off"}, False),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, False),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}, False),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_on"}, True),
        ({"OTEL_TRACES_SAMPLER": "always_on"}, True),
    ],
)
def test_otel_traces_sampler_env_governs_export_of_root_decisions(
    make_client: MakeClient,
    collector: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    exported: bool,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = make_client(exporters=[collector])
    event_ids = [client.trace("price.changed", f"Change {i}").record() for i in range(5)]
    assert {e.id for e in client.query(limit=None)} == set(event_ids)
    assert _exported_ids(client, collector) == (set(event_ids) if exported else set())


def test_otel_traces_sampler_env_does_not_override_a_sampled_parent(
    make_client: MakeClient, collector: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under a parent, the decision belongs to the parent's trace and takes its flag.
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_off")
    client = make_client(exporters=[collector])
    with _remote_parent(SAMPLED_PARENT):
        event_id = client.trace("order.created", "Created").record()
    assert _exported_ids(client, collector) == {event_id}


@pytest.mark.parametrize("parent", [SAMPLED_PARENT, UNSAMPLED_PARENT])
def test_decision_span_passes_the_sampled_flag_on_unchanged(
    make_client: MakeClient, collector: InMemorySpanExporter, parent: str
) -> None:
    sampled = parent.endswith("-01")
    client = make_client(exporters=[collector])
    provider, app_exported = _app_provider(ParentBased(ALWAYS_ON))
    with (
        _remote_parent(parent),
        client.span("order.fulfilment", "Fulfil") as trace,
    ):
        downstream = client.current_traceparent()
        with provider.get_tracer("shop").start_as_current_span("call-warehouse") as child:
            child_sampled = child.get_span_context().trace_flags.sampled
    assert downstream is not None
    assert bool(int(downstream.rsplit("-", 1)[1], 16) & 0x01) is sampled
    assert child_sampled is sampled
    assert len(app_exported.get_finished_spans()) == (1 if sampled else 0)
    event = client.get_event(trace.event_id or "")
    assert event is not None and event.correlation_id == TRACE_ID
    assert _exported_ids(client, collector) == ({trace.event_id} if sampled else set())


# -- traceparent in and out ------------------------------------------------------------------


def test_traceparent_round_trip_between_two_services(
    other_ledger_target: str, make_client: MakeClient
) -> None:
    upstream = make_client()
    downstream = make_client(db_path=other_ledger_target)
    assert upstream.current_traceparent() is None
    with upstream.span("checkout.submitted", "Checkout") as trace:
        header = upstream.current_traceparent()
    assert header is not None
    version, trace_id, span_id, flags = header.split("-")
    assert version == "00"
    assert int(flags, 16) & 0x01  # sampled (newer SDKs also set the random-trace-id bit)
    assert span_id == trace.event_id
    child_id = (
        downstream.trace("payment.captured", "Captured")
        .by_external("stripe", service_name="api.stripe.com")
        .child_of(header)
        .record()
    )
    child = downstream.get_event(child_id)
    parent = upstream.get_event(trace.event_id or "")
    assert child is not None and parent is not None
    assert child.parent_event_id == parent.id
    assert child.correlation_id == parent.correlation_id == trace_id


def test_child_of_unsampled_traceparent_is_stored_not_exported(
    make_client: MakeClient, collector: InMemorySpanExporter
) -> None:
    client = make_client(exporters=[collector])
    event_id = client.trace("order.created", "Created").child_of(UNSAMPLED_PARENT).record()
    event = client.get_event(event_id)
    assert event is not None
    assert (event.correlation_id, event.parent_event_id) == (TRACE_ID, PARENT_ID)
    assert _exported_ids(client, collector) == set()


def test_current_traceparent_names_the_apps_current_span(make_client: MakeClient) -> None:
    client = make_client()
    provider, _ = _app_provider(ALWAYS_ON)
    with provider.get_tracer("shop").start_as_current_span("GET /") as request:
        header = client.current_traceparent()
    trace_id, span_id = _hex_ids(request)
    assert header is not None
    assert header.startswith(f"00-{trace_id}-{span_id}-")
    assert int(header.rsplit("-", 1)[1], 16) & 0x01


@pytest.mark.parametrize(
    "bad",
    ["00-00000000000000000000000000000000-b7ad6b7169203331-01", "not-a-traceparent", ""],
)
def test_child_of_rejects_invalid_traceparent(make_client: MakeClient, bad: str) -> None:
    client = make_client()
    with pytest.raises(InvalidInputError):
        client.trace("order.created", "Created").child_of(bad)


# -- OTEL_SDK_DISABLED -------------------------------------------------------------------------


def test_sdk_disabled_keeps_decisions_in_the_ledger(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    client = make_client()
    event_id = client.trace("refund.approved", "Approved").because("Broken item").record()
    with client.span("report.generated", "Report") as trace:
        pass
    event = client.get_event(event_id)
    assert event is not None and event.decision is not None
    assert event.decision.reasoning == "Broken item"
    assert client.get_event(trace.event_id or "") is not None


# -- the attribute vocabulary ------------------------------------------------------------------

DEPRECATED_KEYS = {"enduser.id", "enduser.role", "enduser.scope", "gen_ai.system", "peer.service"}


def _key_constants() -> set[str]:
    """Every attribute key constant in decision_trace.attributes."""
    return {
        value
        for name, value in vars(keys).items()
        if name.isupper()
        and isinstance(value, str)
        and re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", value) is not None
    }


def test_every_attribute_on_real_spans_is_a_documented_constant(
    make_client: MakeClient, collector: InMemorySpanExporter
) -> None:
    client = make_client(exporters=[collector], service_name="shop")
    client.trace("refund.approved", "Approved").by_user(
        "u-1", "Sam", email="sam@example.com", role="support", team="emea"
    ).affecting_order("ord-1", {"status": "refunded"}).because(
        "Broken",
        context={"defect": "screen"},
        alternatives=[{"action": "replace"}],
        rejection_reasons={"replace": "out of stock"},
        confidence=0.9,
        risk_level="high",
    ).with_tags("refund").with_metadata(channel="web").failed("declined").record()
    client.trace("price.changed", "Lowered").by_ai_agent(
        "pricing-ai", "Pricing", model="gpt-4", version="2"
    ).record()
    client.trace("payment.captured", "Captured").by_external(
        "stripe", "Stripe", service_name="api.stripe.com"
    ).succeeded().record()
    client.trace("sync.done", "Synced").by_compute("job", "Sync", version="3").pending().record()
    assert client.flush()
    spans = collector.get_finished_spans()
    assert len(spans) == 4
    seen = {key for span in spans for key in (span.attributes or {})}
    assert seen <= _key_constants(), seen - _key_constants()
    assert not seen & DEPRECATED_KEYS
    assert {span.resource.attributes[keys.SERVICE_NAME] for span in spans} == {"shop"}
    # Every key constant except the resource's service.name shows up on these spans.
    assert _key_constants() - seen == {keys.SERVICE_NAME}


def test_no_deprecated_key_is_defined() -> None:
    assert not _key_constants() & DEPRECATED_KEYS


def _otel_doc_section() -> str:
    text = (REPO_ROOT / "docs" / "opentelemetry.md").read_text()
    return text.split("## OpenTelemetry integration", 1)[1].split("\n## ", 1)[0]


def test_readme_attribute_table_lists_every_key_we_emit() -> None:
    section = _otel_doc_section()
    table = section[section.index("### Attributes") :]
    listed = set(re.findall(r"^\| `([a-z_.]+)` \|", table, flags=re.MULTILINE))
    assert listed == _key_constants()


def test_readme_otel_section_names_the_env_vars_and_entry_point() -> None:
    section = _otel_doc_section()
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        "OTEL_SERVICE_NAME",
        "OTEL_TRACES_SAMPLER",
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_EXPORTER=otlp,decision_trace",
        "opentelemetry-instrument",
        "current_traceparent()",
    ):
        assert name in section


def test_a_renamed_sdk_internal_degrades_to_one_warning(
    make_client: Callable[..., DecisionTraceClient],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """decision_trace._otel guards every SDK-private access: without the one that reads
    OTEL_TRACES_SAMPLER, a client still records every decision and says what it lost."""
    from opentelemetry.sdk.trace import sampling

    from decision_trace import _otel

    monkeypatch.setattr(_otel, "_warned", set())  # as in a fresh process (warned once each)
    monkeypatch.delattr(sampling, "_get_from_env_or_default")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    client = make_client(durability="sync")
    event_id = client.trace("job.ran").by_system("cron").record()
    assert client.get_event(event_id) is not None
    warnings = [r for r in caplog.records if "_get_from_env_or_default" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
