"""Flask recipe: a refund endpoint that records why, with one client for the whole app.

Run it, refund an order, then ask why::

    export DECISION_TRACE_DB=/tmp/shop.db
    flask --app examples/recipes/flask_app.py run
    curl -X POST localhost:5000/orders/ord-1003/refund -H 'Content-Type: application/json' \\
        -d '{"amount": "30.00", "reason": "Lid arrived cracked", "agent_id": "agent-sam"}'
    decision-trace why order:ord-1003

The client is created once, at import (app start): it owns the ledger's writer thread,
and it flushes what is queued when the process exits, SIGTERM included. A handler only
builds and records, which costs about 0.1 ms and never waits for the disk.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from decision_trace import InvalidInputError
from decision_trace.ecommerce import EcommerceClient

app = Flask(__name__)
decisions = EcommerceClient(service_name="shop-api")  # $DECISION_TRACE_DB or the default


@app.post("/orders/<order_id>/refund")
def refund(order_id: str) -> ResponseReturnValue:
    body = request.get_json(force=True)
    try:
        amount = Decimal(str(body.get("amount")))
    except InvalidOperation:
        return jsonify(field="amount", error="must be a number"), 400
    event_id = (
        decisions.order_refunded(
            order_id,
            amount,
            body.get("reason"),
            previous_status="paid",  # the order's status before: from your order store
        )
        .by_user(body.get("agent_id"), role="support")
        .record()
    )
    return jsonify(order_id=order_id, status="refunded", decision=event_id)


@app.errorhandler(InvalidInputError)
def bad_input(error: InvalidInputError) -> ResponseReturnValue:
    """The library names the field that was wrong: hand that back to the caller."""
    return jsonify(field=error.field, error=error.problem), 400
