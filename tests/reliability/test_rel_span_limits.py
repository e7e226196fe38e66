"""Span limits: the application's OTEL_SPAN_* limits never change what the ledger stores."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from reliability_support import run_python, write_script

# Records the same rich events (long strings, many attributes) deterministically, both
# with its own limited provider installed globally and through decision-trace.
RECORD = """
    import sys
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from decision_trace import DecisionTraceClient

    # The application's own provider honours the limits (proving they are in effect).
    app_provider = TracerProvider()
    trace.set_tracer_provider(app_provider)
    attrs = {f"k{i}": "y" * 50 for i in range(9)}
    span = trace.get_tracer("app").start_span("app", attributes=attrs)
    print(len(span.attributes), max(len(v) for v in span.attributes.values()))
    span.end()

    client = DecisionTraceClient(db_path=sys.argv[1], durability="sync", service_name="shop")
    with trace.get_tracer("app").start_as_current_span("request"):
        for i in range(3):
            client.trace("price.changed", "A long description " * 40) \\
                .by_user(f"user-{i}", "Someone With A Long Name", email="someone@example.com",
                         role="pricing-manager", team="pricing", level=3) \\
                .affecting_product(f"SKU-{i}", {"title": "Long product title " * 30},
                                   state_before={"price": 10.5}, state_after={"price": 12.25}) \\
                .affecting_order(f"ORD-{i}") \\
                .affecting_customer(f"CUST-{i}") \\
                .because("Because " * 200,
                         context={f"factor_{n}": "v" * 100 for n in range(30)},
                         alternatives=[{"action": f"alt{n}", "d": "d" * 80} for n in range(10)],
                         rejection_reasons={f"alt{n}": "no " * 20 for n in range(10)},
                         confidence=0.875, risk_level="high") \\
                .with_tags(*[f"tag-number-{n}" for n in range(12)]) \\
                .with_metadata({f"meta_{n}": "m" * 64 for n in range(20)}) \\
                .record()
    client.close()
"""

COMPARED = (
    "event_type, description, actor_type, actor_id, actor_name, actor_json, reasoning, "
    "decision_json, objects_json, tags_json, outcome, error, metadata_json, service_name"
)


def _rows(db: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(f"SELECT {COMPARED} FROM events ORDER BY rowid").fetchall()
        rows += conn.execute(
            "SELECT object_type, external_id FROM event_objects ORDER BY event_rowid, position"
        ).fetchall()
        rows += conn.execute("SELECT tag FROM event_tags ORDER BY event_rowid, tag").fetchall()
        return rows
    finally:
        conn.close()


def test_app_span_limits_do_not_change_a_byte_of_the_ledger(tmp_path: Path) -> None:
    script = write_script(tmp_path, "record.py", RECORD)
    unlimited = run_python(script, str(tmp_path / "unlimited.db"))
    assert unlimited.returncode == 0, unlimited.stderr
    assert unlimited.stdout.split() == ["9", "50"]
    limited = run_python(
        script,
        str(tmp_path / "limited.db"),
        env={
            "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT": "10",
            "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "5",
            "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "10",
            "OTEL_ATTRIBUTE_COUNT_LIMIT": "5",
        },
    )
    assert limited.returncode == 0, limited.stderr
    assert limited.stdout.split() == ["5", "10"], "the limits are in effect for the app"
    expected = _rows(tmp_path / "unlimited.db")
    assert len(expected) == 3 + 9 + 36
    assert _rows(tmp_path / "limited.db") == expected
    description = expected[0][1]
    assert isinstance(description, str) and len(description) == len("A long description ") * 40
