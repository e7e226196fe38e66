"""The one JSON shape of an event: what ``--json``, ``export`` and any HTTP API print.

Keys and their order are a promise to scripts that read them; add keys, never rename.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from .models import TraceEvent

__all__ = ["event_to_json"]


def event_to_json(event: TraceEvent) -> dict[str, Any]:
    """One event as a JSON-ready dict (the shape of ``--json`` and ``export``)."""
    actor = event.actor
    decision = event.decision
    return {
        "id": event.id,
        "timestamp": event.timestamp.isoformat(),
        "duration_ms": (event.duration // timedelta(microseconds=1)) / 1000,
        "event_type": event.event_type,
        "description": event.description,
        "actor": None
        if actor is None
        else {
            "type": actor.type.value,
            "id": actor.id,
            "name": actor.name,
            "email": actor.email,
            "role": actor.role,
            "model": actor.model,
            "version": actor.version,
            "service_name": actor.service_name,
            "metadata": dict(actor.metadata),
        },
        "decision": None
        if decision is None
        else {
            "reasoning": decision.reasoning,
            "context": dict(decision.context),
            "alternatives": [dict(a) for a in decision.alternatives],
            "rejection_reasons": dict(decision.rejection_reasons),
            "confidence": decision.confidence,
            "risk_level": decision.risk_level.value if decision.risk_level else None,
        },
        "objects": [
            {
                "object_type": o.object_type.value,
                "external_id": o.external_id,
                "state": dict(o.state),
                "state_before": dict(o.state_before) if o.state_before is not None else None,
                "state_after": dict(o.state_after) if o.state_after is not None else None,
            }
            for o in event.objects
        ],
        "outcome": event.outcome.value,
        "error": event.error,
        "tags": list(event.tags),
        "metadata": dict(event.metadata),
        "correlation_id": event.correlation_id,
        "parent_event_id": event.parent_event_id,
        "service_name": event.service_name,
    }
