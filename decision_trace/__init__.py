"""decision-trace: who did what to which business object, and why, as OpenTelemetry spans.

Quick start::

    from decision_trace import DecisionTraceClient

    client = DecisionTraceClient()
    client.trace("order.cancelled", "Order cancelled by customer") \\
        .by_user("cust-123", "John Doe") \\
        .affecting_order("ord-456", {"status": "cancelled"}) \\
        .because("Customer found better price elsewhere") \\
        .record()
"""

import typing as _typing

from .errors import (
    DecisionTraceError,
    EventNotFoundError,
    InvalidInputError,
    SchemaVersionError,
    StoreError,
)
from .models import (
    Actor,
    ActorType,
    ChainNode,
    DecisionTrace,
    ObjectType,
    Outcome,
    RiskLevel,
    TraceEvent,
    TrackedObject,
)

if _typing.TYPE_CHECKING:
    from .builder import TraceBuilder
    from .client import DecisionTraceClient
    from .ecommerce import EcommerceClient, EcommerceEventType
    from .processor import LedgerStats
    from .redaction import Redaction

# The recording API (and with it the OpenTelemetry SDK) is imported on first use, so that
# `import decision_trace.storage` or the values above cost no SDK import.
_LAZY = {
    "TraceBuilder": "builder",
    "DecisionTraceClient": "client",
    "EcommerceClient": "ecommerce",
    "EcommerceEventType": "ecommerce",
    "LedgerStats": "processor",
    "Redaction": "redaction",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'decision_trace' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__version__ = "0.1.0"

__all__ = [
    "Actor",
    "ActorType",
    "ChainNode",
    "DecisionTrace",
    "DecisionTraceClient",
    "DecisionTraceError",
    "EcommerceClient",
    "EcommerceEventType",
    "EventNotFoundError",
    "InvalidInputError",
    "LedgerStats",
    "ObjectType",
    "Outcome",
    "Redaction",
    "RiskLevel",
    "SchemaVersionError",
    "StoreError",
    "TraceBuilder",
    "TraceEvent",
    "TrackedObject",
]
