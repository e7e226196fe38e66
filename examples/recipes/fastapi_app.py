"""FastAPI recipe: a refund endpoint that records why, with one client for the whole app.

Run it, refund an order, then ask why::

    export DECISION_TRACE_DB=/tmp/shop.db
    uvicorn --app-dir examples/recipes fastapi_app:app
    curl -X POST localhost:8000/orders/ord-1003/refund -H 'Content-Type: application/json' \\
        -d '{"amount": "30.00", "reason": "Lid arrived cracked", "agent_id": "agent-sam"}'
    decision-trace why order:ord-1003

The client is created once, when the app starts (the lifespan), and closed when it stops,
which flushes what is still queued. A handler only builds and records, which costs about
0.1 ms and never waits for the disk, so a plain ``def`` or an ``async def`` handler can
both call it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from decision_trace import InvalidInputError
from decision_trace.ecommerce import EcommerceClient


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    with EcommerceClient(service_name="shop-api") as client:  # $DECISION_TRACE_DB or default
        app.state.decisions = client
        yield  # the app serves requests here; leaving the block flushes and closes


app = FastAPI(lifespan=lifespan)


class Refund(BaseModel):
    amount: Decimal
    reason: str
    agent_id: str


@app.post("/orders/{order_id}/refund")
async def refund(order_id: str, body: Refund, request: Request) -> dict[str, str]:
    decisions: EcommerceClient = request.app.state.decisions
    event_id = (
        decisions.order_refunded(
            order_id,
            body.amount,
            body.reason,
            previous_status="paid",  # the order's status before: from your order store
        )
        .by_user(body.agent_id, role="support")
        .record()
    )
    return {"order_id": order_id, "status": "refunded", "decision": event_id}


@app.exception_handler(InvalidInputError)
async def bad_input(request: Request, error: InvalidInputError) -> JSONResponse:
    """The library names the field that was wrong: hand that back to the caller."""
    return JSONResponse({"field": error.field, "error": error.problem}, status_code=400)
