"""``/openapi.json`` matches what the read API does: schemathesis generates requests from
the document (valid ones, and invalid ones) and checks every answer of the running server
against it: documented status, content type and body schema, and never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from read_api_support import get, record_shop, serve
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.checks import ignored_auth

from decision_trace.server.openapi import openapi_document
from decision_trace.storage import open_ledger

TOKEN = "schema-token"

schema = schemathesis.openapi.from_dict(openapi_document())
# The token is sent by the test itself (below), so schemathesis does not generate (or, in
# negative cases, leave out) the Authorization header; ignored_auth checks that a request
# without it is refused.
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], with_security_parameters=False
)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    target = str(tmp_path_factory.mktemp("openapi") / "traces.db")
    record_shop(target)
    ledger = open_ledger(target)
    try:
        with serve(ledger, token=TOKEN) as url:
            yield url
    finally:
        ledger.close()


def test_the_served_document_is_the_documented_one(server_url: str) -> None:
    status, body, headers = get(server_url, "/openapi.json", token=TOKEN)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert body == openapi_document()
    assert body["openapi"].startswith("3.1")


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same requests every run: CI is not at the mercy of chance
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_answer_is_one_the_document_describes(
    case: schemathesis.Case, server_url: str
) -> None:
    case.call_and_validate(
        base_url=server_url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
            negative_data_rejection,
            ignored_auth,
        ],
    )


def test_every_route_of_the_api_is_documented(tmp_path: Path) -> None:
    """The document names every route ``routes()`` serves (but the catch-all 404s)."""
    from decision_trace.server.api import routes

    ledger = open_ledger(tmp_path / "t.db")
    try:
        served = {
            route.path.replace("{external_id:dt_text}", "{external_id}")  # type: ignore[attr-defined]
            for route in routes(ledger, lambda request: None)
            if "{rest:" not in route.path and route.path != "/api/v1"  # type: ignore[attr-defined]
        }
    finally:
        ledger.close()
    assert served == set(openapi_document()["paths"])
