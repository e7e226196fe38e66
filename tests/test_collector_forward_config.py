"""collector-config/forward-to-serve.yaml: well-formed, self-consistent, and it forwards
exactly the spans decision-trace records to ``decision-trace serve``.

No collector runs here (none is installable on this machine): these checks tie the
configuration to what decision-trace emits (``decision_trace.attributes``), to what the
service expects (its token variable, its OTLP/HTTP path), and to the rules the
collector's own configuration validation applies to a persistent sending queue. The
filter's conditions are evaluated, by a small interpreter of the OTTL subset they use,
against spans recorded by a real ``DecisionTraceClient`` and against an application's
ordinary spans.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from decision_trace import DecisionTraceClient
from decision_trace import attributes as keys
from decision_trace.server import TOKEN_ENV_VAR

CONFIG = Path(__file__).resolve().parent.parent / "collector-config" / "forward-to-serve.yaml"
README = CONFIG.parent / "README.md"
EXPORTER = "otlphttp/decision_trace"
_ENV = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def emitted_keys() -> set[str]:
    """Every attribute key constant in decision_trace.attributes."""
    return {
        value
        for name, value in vars(keys).items()
        if name.isupper()
        and isinstance(value, str)
        and re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", value) is not None
    }


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded = yaml.safe_load(CONFIG.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _pipeline(config: dict[str, Any]) -> dict[str, list[str]]:
    pipelines = config["service"]["pipelines"]
    assert len(pipelines) == 1, "one pipeline: decisions to the ledger service"
    (name, pipeline) = next(iter(pipelines.items()))
    assert name.split("/")[0] == "traces"
    return dict(pipeline)


def _filter_conditions(config: dict[str, Any]) -> list[str]:
    conditions: list[str] = []
    for name, processor in config["processors"].items():
        if name.split("/")[0] != "filter":
            continue
        assert set(processor) <= {"error_mode", "traces"}, "only span conditions are expected"
        assert set(processor["traces"]) == {"span"}
        conditions.extend(processor["traces"]["span"])
    return conditions


def _default(value: str) -> str:
    """``value`` with every ``${env:NAME:-default}`` replaced by its default."""
    return _ENV.sub(lambda m: m.group(2) or "", value)


# --- structure ---------------------------------------------------------------------------


def test_is_well_formed_with_the_required_components(config: dict[str, Any]) -> None:
    assert set(config) == {"extensions", "receivers", "processors", "exporters", "service"}
    assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    processor_types = {name.split("/")[0] for name in config["processors"]}
    assert {"memory_limiter", "filter"} <= processor_types
    assert [name.split("/")[0] for name in config["exporters"]] == ["otlphttp"]
    assert [name.split("/")[0] for name in config["extensions"]] == ["file_storage"]


def test_pipeline_uses_only_defined_components_in_a_sane_order(config: dict[str, Any]) -> None:
    pipeline = _pipeline(config)
    for kind in ("receivers", "processors", "exporters"):
        assert pipeline[kind], f"the pipeline has no {kind}"
        for component in pipeline[kind]:
            assert component in config[kind], f"{component} is not defined in {kind}"
        # Every defined component is used (the collector warns about unused ones).
        assert set(config[kind]) == set(pipeline[kind])
    assert set(config["service"]["extensions"]) == set(config["extensions"])
    processors = [name.split("/")[0] for name in pipeline["processors"]]
    assert processors[0] == "memory_limiter"
    # Spans are filtered before anything holds them: a batch processor (if one is ever
    # added) comes after the filter, so it never buffers spans that are dropped anyway.
    if "batch" in processors:
        assert processors.index("filter") < processors.index("batch")
    assert pipeline["exporters"] == [EXPORTER]


def test_the_exporter_sends_otlp_http_protobuf_to_the_service(config: dict[str, Any]) -> None:
    exporter = config["exporters"][EXPORTER]
    endpoint = exporter["endpoint"]
    # The base URL: the exporter appends /v1/traces, the path the service receives on.
    default = _default(endpoint)
    assert re.fullmatch(r"https?://[^/]+", default), default
    assert _ENV.search(endpoint), "the service's address must be configurable"
    assert exporter.get("encoding", "proto") == "proto"
    assert exporter.get("compression", "gzip") in ("gzip", "none")  # what the service reads
    # The default must not be this collector's own OTLP/HTTP receiver (a loop).
    receiver = _default(config["receivers"]["otlp"]["protocols"]["http"]["endpoint"])
    assert default.split("://", 1)[1] != receiver


def test_the_token_comes_from_the_services_own_variable(config: dict[str, Any]) -> None:
    exporter = config["exporters"][EXPORTER]
    headers = {k.lower(): v for k, v in exporter["headers"].items()}
    assert headers["authorization"] == f"Bearer ${{env:{TOKEN_ENV_VAR}}}"
    # No token is written into the file, not even as a default.
    assert f"${{env:{TOKEN_ENV_VAR}:-" not in CONFIG.read_text()


def test_the_sending_queue_is_persistent_and_retries_forever(config: dict[str, Any]) -> None:
    exporter = config["exporters"][EXPORTER]
    queue = exporter["sending_queue"]
    assert queue.get("enabled", True) is True
    storage = queue["storage"]
    assert storage.split("/")[0] == "file_storage"
    assert storage in config["extensions"] and storage in config["service"]["extensions"]
    assert config["extensions"][storage]["directory"]
    # The collector refuses these combinations at start (exporterhelper's validation).
    assert not queue.get("wait_for_result", False), "not supported with a persistent queue"
    assert queue["num_consumers"] > 0 and queue["queue_size"] > 0
    batch = queue.get("batch")
    if batch is not None:
        batch_sizer = batch.get("sizer", queue.get("sizer", "items"))
        assert batch_sizer in ("items", "bytes")
        assert batch["flush_timeout"]
        min_size, max_size = batch["min_size"], batch.get("max_size", 0)
        assert min_size >= 0 and (max_size == 0 or max_size >= min_size)
        if batch_sizer == queue.get("sizer", "requests"):
            assert batch["min_size"] <= queue["queue_size"]
    retry = exporter["retry_on_failure"]
    assert retry.get("enabled", True) is True
    # An audit record is never dropped for having waited too long: it stays on disk
    # until the service takes it.
    assert retry["max_elapsed_time"] == 0


def test_every_environment_variable_is_documented(config: dict[str, Any]) -> None:
    text = CONFIG.read_text()
    readme = README.read_text()
    names = {m.group(1) for m in _ENV.finditer(text)}
    assert TOKEN_ENV_VAR in names
    for name in names:
        assert f"`{name}`" in readme, f"{name} is not in collector-config/README.md"
        assert re.search(rf"^#\s+{name}\b", text, flags=re.M), f"{name} is not in the header"


def _merged(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """What the collector makes of ``--config first --config second``: maps are merged
    key by key, anything else is taken from the later file."""
    merged = dict(first)
    for key, value in second.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def test_it_combines_with_config_yaml(config: dict[str, Any]) -> None:
    """``--config config.yaml --config forward-to-serve.yaml`` is one collector that sends
    everything to the tracing backend and the decisions to the ledger service."""
    other = yaml.safe_load((CONFIG.parent / "config.yaml").read_text())
    for kind in ("receivers", "processors", "exporters", "extensions"):
        for name in set(config.get(kind, {})) & set(other.get(kind, {})):
            assert config[kind][name] == other[kind][name], f"{kind}.{name} differs"
    merged = _merged(other, config)
    pipelines = merged["service"]["pipelines"]
    assert set(pipelines) == set(other["service"]["pipelines"]) | set(
        config["service"]["pipelines"]
    )
    for pipeline in pipelines.values():
        assert pipeline["processors"][0] == "memory_limiter"
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline[kind]:
                assert component in merged[kind]
    assert set(merged["service"]["extensions"]) == set(merged["extensions"])


# --- what is forwarded ----------------------------------------------------------------------


def test_every_attribute_named_is_one_we_emit(config: dict[str, Any]) -> None:
    named = set(re.findall(r'attributes\["([^"]+)"\]', "\n".join(_filter_conditions(config))))
    assert named, "the filter names no attributes"
    assert named <= emitted_keys(), named - emitted_keys()
    assert all(key.startswith(keys.NAMESPACE) for key in named)


class _Capture(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


@pytest.fixture(scope="module")
def decision_spans(tmp_path_factory: pytest.TempPathFactory) -> list[ReadableSpan]:
    """Spans recorded by decision-trace: the fluent builder, a failed ``span()``, an
    agent's decision, a system actor; as the client's provider hands them to exporters."""
    capture = _Capture()
    path = tmp_path_factory.mktemp("forward") / "traces.db"
    with DecisionTraceClient(db_path=path, service_name="checkout") as client:
        client.tracer_provider.add_span_processor(SimpleSpanProcessor(capture))
        client.trace("order.refunded", "Refund order 123").by_user("u-1", "Ann").affecting(
            "order", "123"
        ).because("damaged in transit").record()
        client.trace("price.changed").by_ai_agent("pricer", "Pricing Agent", model="m").record()
        client.trace("inventory.adjusted").by_system("nightly-sync").record()
        with pytest.raises(RuntimeError), client.span("payment.captured", "Capture"):
            raise RuntimeError("gateway timeout")
    assert len(capture.spans) == 4
    return capture.spans


@pytest.fixture(scope="module")
def application_spans() -> list[ReadableSpan]:
    """An application's ordinary spans, through its own provider: a request, a query."""
    capture = _Capture()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(capture))
    tracer = provider.get_tracer("app")
    with (
        tracer.start_as_current_span("GET /orders/123", attributes={"http.route": "/orders"}),
        tracer.start_as_current_span("SELECT orders", attributes={"db.system": "sqlite"}),
    ):
        pass
    with tracer.start_as_current_span("decision", attributes={"decision.kind": "manual"}):
        pass
    provider.shutdown()
    assert len(capture.spans) == 3
    return capture.spans


def _dropped(conditions: Sequence[str], span: ReadableSpan) -> bool:
    """What the filter processor does with ``span``: dropped when any condition holds."""
    attributes = dict(span.attributes or {})
    return any(_evaluate(condition, attributes) for condition in conditions)


def test_decision_spans_are_forwarded(
    config: dict[str, Any], decision_spans: list[ReadableSpan]
) -> None:
    conditions = _filter_conditions(config)
    assert conditions
    for span in decision_spans:
        assert not _dropped(conditions, span), span.name


def test_other_spans_are_not(config: dict[str, Any], application_spans: list[ReadableSpan]) -> None:
    conditions = _filter_conditions(config)
    for span in application_spans:
        assert _dropped(conditions, span), span.name


def test_the_interpreter_reads_what_it_is_given() -> None:
    """The small OTTL interpreter below, on its own (so the two tests above cannot pass
    by an interpreter that always answers the same)."""
    attributes = {"a.b": "x", "n": 0}
    assert _evaluate('attributes["a.b"] != nil', attributes)
    assert not _evaluate('attributes["a.b"] == nil', attributes)
    assert _evaluate('attributes["missing"] == nil', attributes)
    assert _evaluate('attributes["a.b"] == "x" and attributes["n"] != nil', attributes)
    assert not _evaluate('not (attributes["a.b"] == "x" or attributes["zz"] != nil)', attributes)
    with pytest.raises(ValueError):
        _evaluate('IsMatch(attributes["a.b"], "x")', attributes)


# --- the README ---------------------------------------------------------------------------


def test_readme_describes_the_forwarding_configuration() -> None:
    readme = README.read_text()
    assert CONFIG.name in readme
    assert "decision-trace serve" in readme
    assert "file_storage" in readme
    assert "structural" in readme, "say how (little) the configuration was validated"


# --- a small interpreter for the OTTL boolean subset the filter uses ----------------------
#
# condition := term ("or" term)* ; term := factor ("and" factor)* ;
# factor := "not" factor | "(" condition ")" | comparison ;
# comparison := attributes["key"] ("==" | "!=") (nil | "string" | integer | true | false)
# Anything else raises ValueError, so a condition this test cannot read fails the test
# instead of being skipped.

_TOKEN = re.compile(
    r'\s*(?:(?P<attr>attributes\["(?P<key>[^"\\]+)"\])|(?P<op>==|!=)|(?P<paren>[()])'
    r'|(?P<string>"(?:[^"\\]|\\.)*")|(?P<int>-?\d+)|(?P<word>[A-Za-z_]+))'
)


def _tokens(text: str) -> Iterator[tuple[str, str]]:
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f"cannot read {text[position:]!r}")
        position = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind == "attr":
            yield ("attr", match.group("key"))
        elif kind == "paren":
            yield (match.group("paren"), match.group("paren"))
        else:
            value = match.group(kind)
            if kind == "word" and value not in ("and", "or", "not", "nil", "true", "false"):
                raise ValueError(f"unsupported OTTL word {value!r}")
            yield (kind if kind != "word" else value, value)


def _evaluate(condition: str, attributes: Mapping[str, Any]) -> bool:
    tokens = list(_tokens(condition))
    position = 0

    def peek() -> str | None:
        return tokens[position][0] if position < len(tokens) else None

    def take(kind: str) -> str:
        nonlocal position
        if peek() != kind:
            raise ValueError(f"expected {kind} in {condition!r}")
        position += 1
        return tokens[position - 1][1]

    def disjunction() -> bool:
        value = conjunction()
        while peek() == "or":
            take("or")
            value = conjunction() or value
        return value

    def conjunction() -> bool:
        value = factor()
        while peek() == "and":
            take("and")
            value = factor() and value
        return value

    def factor() -> bool:
        if peek() == "not":
            take("not")
            return not factor()
        if peek() == "(":
            take("(")
            value = disjunction()
            take(")")
            return value
        key = take("attr")
        operator = take("op")
        literal = operand()
        equal = attributes.get(key) == literal
        return equal if operator == "==" else not equal

    def operand() -> Any:
        kind = peek()
        if kind == "nil":
            take("nil")
            return None
        if kind in ("true", "false"):
            return take(kind) == "true"
        if kind == "string":
            return take("string")[1:-1].encode().decode("unicode_escape")
        if kind == "int":
            return int(take("int"))
        raise ValueError(f"unsupported operand in {condition!r}")

    result = disjunction()
    if position != len(tokens):
        raise ValueError(f"unread tokens in {condition!r}")
    return result
