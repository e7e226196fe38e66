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

from .builder import TraceBuilder
from .client import DecisionTraceClient
from .ecommerce import EcommerceClient, EcommerceEventType
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
from .processor import LedgerStats
from .redaction import Redaction

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
