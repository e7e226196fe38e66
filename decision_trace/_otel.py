"""Every use of OpenTelemetry SDK internals, and the SDK pieces decision-trace configures.

decision-trace uses only public OpenTelemetry APIs except where this module says so.
Each private access is guarded: an SDK release that renames it degrades to a warning
(logged once) and a documented fallback, never to a crash of the application.

- :func:`enable_provider`: ``OTEL_SDK_DISABLED=true`` makes the SDK's ``TracerProvider``
  hand out no-op tracers (the private ``_disabled`` flag); the audit trail must not be
  switched off with telemetry, so our own provider is re-enabled.
- :func:`_env_sampler`: the sampler ``OTEL_TRACES_SAMPLER`` names, built by the SDK's
  private ``sampling._get_from_env_or_default``.
- :func:`span_processors`: the span processors of the application's provider (the private
  ``_active_span_processor._span_processors``), so that a SIGTERM flush gives each its own
  deadline instead of the SDK's one-after-the-other ``force_flush`` (where an exporter stuck
  on a dead collector would hold up the ledger's); without it the provider is flushed whole.

(The span decoder in ``_decode.py`` also reads a finished span's attribute dict
directly, with ``getattr`` and a fallback to the public mapping; that stays there, on the
hot path of every event.)
"""

from __future__ import annotations

import logging
import os
import random
import weakref
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import sampling as _sampling
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

from .errors import InvalidInputError

__all__ = [
    "NO_LIMITS",
    "LedgerSampler",
    "OsRandomIdGenerator",
    "enable_provider",
    "otlp_exporter",
    "span_processors",
]

_logger = logging.getLogger(__name__)
_warned: set[str] = set()


def _warn_once(what: str, fallback: str) -> None:
    if what not in _warned:
        _warned.add(what)
        _logger.warning(
            "decision-trace: this OpenTelemetry SDK has no %s (an internal that decision-trace "
            "uses); %s",
            what,
            fallback,
        )


def _env_sampler() -> Sampler | None:
    """The sampler ``OTEL_TRACES_SAMPLER`` names, or None if the SDK cannot say."""
    get = getattr(_sampling, "_get_from_env_or_default", None)
    if get is None:
        _warn_once(
            "sampling._get_from_env_or_default",
            "OTEL_TRACES_SAMPLER is ignored for decisions that have no parent span (they are "
            "exported as sampled); the ledger keeps every decision either way",
        )
        return None
    sampler = get()
    return sampler if isinstance(sampler, Sampler) else None


def enable_provider(provider: TracerProvider) -> None:
    """Keep ``provider`` recording under ``OTEL_SDK_DISABLED=true`` (see the module)."""
    if not hasattr(provider, "_disabled"):
        if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            _warn_once(
                "TracerProvider._disabled",
                "with OTEL_SDK_DISABLED=true decisions may not be recorded; unset it",
            )
        return
    if provider._disabled:
        provider._disabled = False


def span_processors(provider: TracerProvider) -> tuple[SpanProcessor, ...] | None:
    """The span processors added to ``provider``, or None if this SDK does not say (see
    the module)."""
    active = getattr(provider, "_active_span_processor", None)
    processors = getattr(active, "_span_processors", None)
    if not isinstance(processors, tuple) or not all(
        isinstance(processor, SpanProcessor) for processor in processors
    ):
        _warn_once(
            "TracerProvider._active_span_processor._span_processors",
            "at SIGTERM/SIGHUP the application's span processors are flushed one after the "
            "other, so an exporter stuck on its collector can use up the shutdown deadline",
        )
        return None
    return processors


class LedgerSampler(Sampler):
    """Record every decision; mark it sampled only when the application would.

    Under a parent span the decision takes the parent's sampled flag. A root decision
    asks the application's sampler: the global SDK provider's, else the one
    ``OTEL_TRACES_SAMPLER`` names, else it is sampled. Where that sampler says DROP the
    span is still recorded (RECORD_ONLY). The ledger keeps RECORD_ONLY spans too, so no
    decision is lost to the application's sampling, while OTLP export (which skips
    unsampled spans) follows it, and the sampled flag passed on to children is never
    changed.
    """

    def __init__(self) -> None:
        self._own_provider: weakref.ref[TracerProvider] | None = None
        self._app_provider: TracerProvider | None = None
        self._env_sampler: Sampler | None = (
            _env_sampler() if os.environ.get("OTEL_TRACES_SAMPLER") else None
        )

    def _app_sampler(self) -> Sampler | None:
        app_provider = self._app_provider
        if app_provider is None:
            provider = otel_trace.get_tracer_provider()
            own = self._own_provider() if self._own_provider is not None else None
            if not isinstance(provider, TracerProvider) or provider is own:
                return self._env_sampler
            # The global provider can be set only once, so it is looked up only until then.
            self._app_provider = app_provider = provider
        return app_provider.sampler

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        parent = otel_trace.get_current_span(parent_context).get_span_context()
        if parent.is_valid:
            decision = (
                Decision.RECORD_AND_SAMPLE if parent.trace_flags.sampled else Decision.RECORD_ONLY
            )
            return SamplingResult(decision, attributes, parent.trace_state)
        app_sampler = self._app_sampler()
        if app_sampler is not None:
            try:
                app = app_sampler.should_sample(
                    parent_context, trace_id, name, kind, attributes, links, trace_state
                )
            except Exception:  # a broken sampler must not cost a decision
                _logger.exception("decision-trace: the application's sampler failed")
            else:
                if app.decision is not Decision.RECORD_AND_SAMPLE:
                    return SamplingResult(Decision.RECORD_ONLY, attributes, app.trace_state)
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, app.trace_state)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "DecisionTraceLedgerSampler"


# Decision spans must never be truncated or lose attributes to the application's
# OTEL_SPAN_* limits: UNSET means "no limit" and ignores the environment.
NO_LIMITS = SpanLimits(
    max_attributes=SpanLimits.UNSET,
    max_events=SpanLimits.UNSET,
    max_links=SpanLimits.UNSET,
    max_span_attributes=SpanLimits.UNSET,
    max_event_attributes=SpanLimits.UNSET,
    max_link_attributes=SpanLimits.UNSET,
    max_attribute_length=SpanLimits.UNSET,
    max_span_attribute_length=SpanLimits.UNSET,
)


class OsRandomIdGenerator(RandomIdGenerator):
    """Span and trace ids seeded from the OS's random source, not the global ``random``.

    The SDK's default draws from Python's global ``random``: an application that seeds
    it (a simulation, a reproducible job) would then reuse event ids, and the ledger would
    take new events for duplicates of stored ones.

    Two ``os.urandom`` calls per event cost a tenth of ``record()``, so the ids come from a
    private generator seeded with 256 bits from ``os.urandom`` (never the global
    ``random``), reseeded in every forked child so parent and child never share ids.
    """

    def generate_span_id(self) -> int:
        span_id = 0
        while span_id == 0:
            span_id = _ID_RANDOM.getrandbits(64)
        return span_id

    def generate_trace_id(self) -> int:
        trace_id = 0
        while trace_id == 0:
            trace_id = _ID_RANDOM.getrandbits(128)
        return trace_id


_ID_RANDOM = random.Random(os.urandom(32))


def _reseed_ids() -> None:
    _ID_RANDOM.seed(os.urandom(32))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_ids)


def otlp_exporter(endpoint: str | None) -> SpanExporter | None:
    """The OTLP exporter the environment (or ``endpoint``) asks for, or None."""
    env = os.environ
    configured = (
        endpoint
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    if not configured:
        return None
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=endpoint) if endpoint else GrpcExporter()
    if protocol != "http/protobuf":
        raise InvalidInputError(
            "OTEL_EXPORTER_OTLP_PROTOCOL", f"must be 'http/protobuf' or 'grpc', got {protocol!r}"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    if endpoint:
        # An explicit base endpoint gets the standard signal path, as the env var does.
        url = (
            endpoint
            if endpoint.rstrip("/").endswith("/v1/traces")
            else (endpoint.rstrip("/") + "/v1/traces")
        )
        return HttpExporter(endpoint=url)
    return HttpExporter()
