"""``HTTPLedger``: a ``decision-trace serve`` read as a ledger, through its read API.

``open_ledger("http://host:4318")`` (or ``https://``) returns one, so the command line
and a client's query methods read the team's ledger service as they read a local file::

    decision-trace --db http://ledger.internal:4318 why order:ord-123

Every query method returns what a local ledger returns (``TraceEvent``, ``ChainNode``,
``LedgerSummary``), decoded from the read API's JSON by :mod:`decision_trace.serialize`.
The token comes from ``$DECISION_TRACE_TOKEN`` and is sent as ``Authorization: Bearer``.

It is read-only by design: events reach the service over OTLP (``POST /v1/traces`` of
``decision-trace serve``, from an SDK or a Collector) or by ``decision-trace ship``, so
``write``, ``prune``, ``compact`` and ``iter_records`` raise :class:`StoreError` saying so.

A plain HTTP client on the standard library (``urllib.request``): no web framework and no
OpenTelemetry, like the rest of the storage layer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import fields
from http.client import HTTPException
from typing import Any, NoReturn
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlencode, urlsplit, urlunsplit
from urllib.request import Request, urlopen

from ..errors import EventNotFoundError, InvalidInputError, StoreError
from ..integrity import ChainState, Checkpoint, ErasureReport, VerifyReport
from ..models import ChainNode, ObjectType, TraceEvent, clean_text
from ..query import LedgerSummary
from ..record import MAX_NS, MIN_NS, EventRecord
from ..serialize import chain_from_json, event_from_json, summary_from_json
from ..store import PruneReport
from .filters import EventFilters, Order

__all__ = ["API_PREFIX", "MAX_PAGE", "TOKEN_ENV_VAR", "HTTPLedger"]

TOKEN_ENV_VAR = "DECISION_TRACE_TOKEN"
"""The bearer token sent to the service (the same variable ``decision-trace serve`` reads)."""

API_PREFIX = "/api/v1"
"""Where the read API lives on the service."""

MAX_PAGE = 1000
"""The most events (or ids) the read API returns in one answer; longer results are read
page by page through its cursors."""

_STREAM_PAGE = 500
"""Page size of the ``iter_*`` streams: memory stays bounded however many events match."""

_MAX_INT64 = 2**63 - 1

_WRITES_GO_ELSEWHERE = (
    "is the read-only view of a decision-trace ledger service: events reach it over OTLP "
    "(POST /v1/traces of `decision-trace serve`, from an OpenTelemetry SDK or Collector) "
    "or with `decision-trace ship`, never through this backend"
)


class _Missing(Exception):
    """The read API answered 404 for the thing asked about."""


def _check_limit(limit: int | None, offset: int = 0) -> None:
    """The checks (and messages) of a local ledger's ``limit`` and ``offset``."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InvalidInputError("limit", f"must be a non-negative integer or None, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidInputError("offset", f"must be a non-negative integer, got {offset!r}")


def _check_order(order: Any) -> None:
    if order not in ("desc", "asc"):
        raise InvalidInputError("order", f"must be 'desc' or 'asc', got {order!r}")


def _check_external_id(external_id: Any) -> str:
    if not isinstance(external_id, str) or not external_id:
        raise InvalidInputError("external_id", "must be a non-empty string")
    return clean_text(external_id)


def _check_id(event_id: Any) -> str:
    if not isinstance(event_id, str):
        raise InvalidInputError("event_id", f"must be a string, got {type(event_id).__name__}")
    return clean_text(event_id)


def filter_params(filters: EventFilters) -> dict[str, Any]:
    """``filters`` as the read API's query parameters (lossless: times in nanoseconds)."""
    params: dict[str, Any] = {}
    # A bound beyond what a ledger can hold selects all or nothing (backends clamp it):
    # one past either end says the same in a number of bounded size.
    if filters.start_ns is not None:
        params["start_ns"] = min(max(filters.start_ns, MIN_NS - 1), MAX_NS + 1)
    if filters.end_ns is not None:
        params["end_ns"] = min(max(filters.end_ns, MIN_NS - 1), MAX_NS + 1)
    for name, values in (
        ("event_type", filters.event_types),
        ("actor_type", filters.actor_types),
        ("actor_id", filters.actor_ids),
        ("object_type", filters.object_types),
        ("object_id", filters.object_ids),
        ("tag", filters.tags),
    ):
        if values is not None:
            params[name] = [clean_text(value) for value in values]
    if filters.outcome is not None:
        params["outcome"] = filters.outcome
    if filters.correlation_id is not None:
        params["correlation_id"] = clean_text(filters.correlation_id)
    return params


def _matches_nothing(filters: EventFilters) -> bool:
    """A filter with an empty list of values matches no event (``IN ()``); the read API
    has no way to say "this parameter, no values", so such a query is answered here."""
    return any(getattr(filters, f.name) == () for f in fields(filters))


class HTTPLedger:
    """A :class:`~decision_trace.storage.Ledger` that reads a ``decision-trace serve``.

    Args:
        url: The service, ``http://host:port`` or ``https://host:port/prefix`` (the
            prefix the service is mounted under behind a proxy, if any).
        token: The bearer token; default ``$DECISION_TRACE_TOKEN`` (none when unset).
        timeout_s: How long one request may take before it fails with
            :class:`StoreError`.

    Raises:
        StoreError: ``url`` is not an ``http(s)://`` URL this backend can use (credentials
            in the URL, a query string).
    """

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise StoreError(f"not an http:// or https:// URL of a ledger service: {url!r}")
        if parts.username is not None or parts.password is not None:
            raise StoreError(
                "a ledger service URL carries no credentials: give the token in "
                f"${TOKEN_ENV_VAR} (it is sent as Authorization: Bearer)"
            )
        if parts.query or parts.fragment:
            raise StoreError(
                f"a ledger service URL has no query or fragment: {parts.scheme}://"
                f"{parts.netloc}{parts.path}"
            )
        self._base = urlunsplit(
            (parts.scheme.lower(), parts.netloc, parts.path.rstrip("/"), "", "")
        )
        explicit = token if token is not None else os.environ.get(TOKEN_ENV_VAR, "")
        self._token = explicit.strip() or None
        self._timeout_s = timeout_s
        self._closed = False

    @property
    def location(self) -> str:
        return self._base

    def __repr__(self) -> str:
        return f"HTTPLedger({self._base!r})"  # never the token

    # -- transport ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the ledger {self._base} is closed")

    def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET ``path`` (under the service's URL) and return its decoded JSON.

        Raises:
            _Missing: the read API answered 404 in its own error shape.
            InvalidInputError: it answered 400 (the message names the parameter).
            StoreError: anything else that is not a 200 with JSON.
        """
        self._check_open()
        url = self._base + path
        if params:
            url += "?" + urlencode(params, doseq=True, quote_via=quote)
        headers = {"Accept": "application/json", "User-Agent": "decision-trace"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        request = Request(url, headers=headers, method="GET")
        try:
            with urlopen(request, timeout=self._timeout_s) as response:
                body = response.read()
        except HTTPError as exc:
            with exc:
                try:
                    error_body = exc.read()
                except (OSError, HTTPException):
                    error_body = b""
                self._raise_for(exc.code, error_body)
        except (URLError, OSError, ValueError, HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise StoreError(f"cannot reach the ledger service {self._base}: {reason}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise StoreError(
                f"{self._base}{path} did not answer JSON: is this a decision-trace ledger "
                "service (decision-trace serve)?"
            ) from None

    def _raise_for(self, status: int, body: bytes) -> NoReturn:
        """Turn the read API's error answer into the error a local ledger would raise."""
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        ours = isinstance(data, dict) and data.get("status") == status and "error" in data
        message = str(data["error"]) if ours and isinstance(data, dict) else ""
        if status == 404 and ours:
            raise _Missing(message)
        if status == 400 and ours and isinstance(data, dict):
            field = data.get("field")
            if isinstance(field, str) and message.startswith(field + ": "):
                raise InvalidInputError(field, message[len(field) + 2 :])
            raise InvalidInputError("request", message)
        if status == 401:
            raise StoreError(
                f"the ledger service {self._base} refused the request (401): set "
                f"${TOKEN_ENV_VAR} to its token"
            )
        if not ours:
            raise StoreError(
                f"{self._base} answered {status} without the read API's JSON error: is this "
                "a decision-trace ledger service (decision-trace serve)?"
            )
        raise StoreError(f"the ledger service {self._base} answered {status}: {message}")

    def _events(self, data: Any, key: str = "events") -> list[TraceEvent]:
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise StoreError(f"{self._base}: unexpected answer (no {key!r} list)")
        try:
            return [event_from_json(item) for item in data[key]]
        except InvalidInputError as exc:
            raise StoreError(f"{self._base}: an event in its answer is malformed: {exc}") from None

    def _pages(
        self, path: str, params: Mapping[str, Any], limit: int | None, *, page_size: int
    ) -> Generator[TraceEvent, None, None]:
        """The events of a paged read, following ``next_cursor`` until ``limit`` events
        (None: all) were yielded; ``params`` go with every page (the cursor is checked
        against them), an ``offset`` only with the first."""
        remaining = limit
        cursor: str | None = None
        while remaining is None or remaining > 0:
            query = dict(params)
            size = page_size if remaining is None else min(remaining, page_size)
            query["limit"] = size
            if cursor is not None:
                query.pop("offset", None)
                query["cursor"] = cursor
            data = self._get(path, query)
            events = self._events(data)
            if remaining is not None:
                events = events[:remaining]
                remaining -= len(events)
            yield from events
            cursor = data.get("next_cursor")
            if not cursor or not events:
                return
            if not isinstance(cursor, str):
                raise StoreError(f"{self._base}: unexpected answer (next_cursor)")

    # -- writing: never here ----------------------------------------------------------

    def _read_only(self, what: str) -> NoReturn:
        raise StoreError(f"cannot {what}: {self._base} {_WRITES_GO_ELSEWHERE}")

    def write(self, records: Sequence[EventRecord]) -> int:
        """Always raises :class:`StoreError`: writing goes through OTLP or shipping."""
        self._read_only("write events")

    def prune(
        self,
        older_than_ns: int,
        *,
        dry_run: bool = False,
        force: bool = False,
        keep_skeleton: bool = False,
    ) -> PruneReport:
        """Always raises :class:`StoreError`: run ``decision-trace prune`` against the
        service's own ledger (``--db`` its path or PostgreSQL URL)."""
        self._read_only(
            "prune (run `decision-trace prune --db` on the service's own ledger, its file "
            "or postgresql:// URL)"
        )

    def chain_state(self) -> ChainState:
        """Always raises :class:`StoreError`: the chain is read from the ledger itself."""
        self._read_only("read the chain (checkpoint the service's own ledger, with --db)")

    def verify(
        self,
        *,
        checkpoints: Sequence[Checkpoint] = (),
        max_problems: int = 100,
        progress: Callable[[int], object] | None = None,
    ) -> VerifyReport:
        """Always raises :class:`StoreError`: verify the service's own ledger."""
        self._read_only("verify (run `decision-trace verify --db` on the service's own ledger)")

    def erase(
        self,
        subject_type: str,
        subject_id: str,
        *,
        reason: str,
        requested_by: str,
        dry_run: bool = False,
    ) -> ErasureReport:
        """Always raises :class:`StoreError`: erase in the service's own ledger."""
        self._read_only("erase (run `decision-trace erase --db` on the service's own ledger)")

    def compact(self) -> bool:
        """Always raises :class:`StoreError` (as :meth:`prune`)."""
        self._read_only("compact (do it on the service's own ledger)")

    def iter_records(
        self, *, after: int = 0, batch_size: int = 500
    ) -> Generator[tuple[int, EventRecord], None, None]:
        """Always raises :class:`StoreError`: the read API serves events as JSON, not the
        records as the ledger stores them, so ``decision-trace copy`` cannot read from a
        service (copy from the service's own ledger instead)."""
        raise StoreError(
            f"cannot read stored records from {self._base}: the read API serves events, not "
            "the records as stored; copy from the service's own ledger (its file or "
            "postgresql:// URL) instead"
        )

    def confirm_writes(self) -> bool:
        """True: this object never writes."""
        return True

    # -- reading ----------------------------------------------------------------------

    def query(
        self,
        filters: EventFilters,
        *,
        limit: int | None = 100,
        offset: int = 0,
        order: Order = "desc",
    ) -> list[TraceEvent]:
        _check_limit(limit, offset)
        _check_order(order)
        self._check_open()
        if limit == 0 or _matches_nothing(filters):
            return []
        params = {**filter_params(filters), "order": order}
        if offset:
            params["offset"] = min(offset, _MAX_INT64)
        return list(self._pages(f"{API_PREFIX}/events", params, limit, page_size=MAX_PAGE))

    def iter_events(
        self, filters: EventFilters, *, order: Order = "asc"
    ) -> Generator[TraceEvent, None, None]:
        _check_order(order)
        self._check_open()
        if _matches_nothing(filters):
            return _nothing()
        params = {**filter_params(filters), "order": order}
        return self._pages(f"{API_PREFIX}/events", params, None, page_size=_STREAM_PAGE)

    def count(self, filters: EventFilters) -> int:
        if _matches_nothing(filters):
            self._check_open()
            return 0
        return self._count(filter_params(filters))

    def _count(self, params: Mapping[str, Any]) -> int:
        data = self._get(f"{API_PREFIX}/events/count", params)
        count = data.get("count") if isinstance(data, dict) else None
        if isinstance(count, bool) or not isinstance(count, int):
            raise StoreError(f"{self._base}: unexpected answer (count)")
        return count

    def search(self, text: str, *, limit: int | None = 50) -> list[TraceEvent]:
        _check_limit(limit)
        query = self._search_text(text)
        if limit == 0:
            self._check_open()
            return []
        return list(self._pages(f"{API_PREFIX}/search", {"q": query}, limit, page_size=MAX_PAGE))

    def iter_search(self, text: str) -> Generator[TraceEvent, None, None]:
        query = self._search_text(text)
        self._check_open()
        return self._pages(f"{API_PREFIX}/search", {"q": query}, None, page_size=_STREAM_PAGE)

    @staticmethod
    def _search_text(text: Any) -> str:
        if not isinstance(text, str):
            raise InvalidInputError("text", f"must be a string, got {type(text).__name__}")
        return clean_text(text)

    def get_event(self, event_id: str) -> TraceEvent | None:
        wanted = _check_id(event_id)
        try:
            data = self._get(f"{API_PREFIX}/events/{quote(wanted, safe='')}")
        except _Missing:
            return None
        try:
            return event_from_json(data)
        except InvalidInputError as exc:
            raise StoreError(f"{self._base}: the event in its answer is malformed: {exc}") from None

    def event_ids_with_prefix(self, prefix: str, *, limit: int | None = 10) -> list[str]:
        if not isinstance(prefix, str):
            raise InvalidInputError("prefix", f"must be a string, got {type(prefix).__name__}")
        _check_limit(limit)
        return self._ids(clean_text(prefix), limit)

    def _ids(self, prefix: str, limit: int | None) -> list[str]:
        """Ids starting with ``prefix``, in id order. One answer holds at most
        :data:`MAX_PAGE`; past that, the ids are those starting with the prefix itself
        (it may be an id) and then with each longer prefix ``prefix + digit``, in order."""
        want = MAX_PAGE if limit is None else min(limit, MAX_PAGE)
        data = self._get(f"{API_PREFIX}/event-ids", {"prefix": prefix, "limit": want})
        ids = data.get("ids") if isinstance(data, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise StoreError(f"{self._base}: unexpected answer (ids)")
        if len(ids) < MAX_PAGE or (limit is not None and limit <= MAX_PAGE):
            return ids
        wanted = prefix.strip().lower()
        found: list[str] = [ids[0]] if ids[0] == wanted else []
        for digit in "0123456789abcdef":
            left = None if limit is None else limit - len(found)
            if left == 0:
                break
            found += self._ids(wanted + digit, left)
        return found

    def object_types_of(self, external_id: str) -> list[ObjectType]:
        wanted = _check_external_id(external_id)
        data = self._get(f"{API_PREFIX}/objects", {"id": wanted})
        types = data.get("types") if isinstance(data, dict) else None
        if not isinstance(types, list):
            raise StoreError(f"{self._base}: unexpected answer (types)")
        try:
            return [ObjectType.parse(value, "object_type") for value in types]
        except InvalidInputError as exc:
            raise StoreError(f"{self._base}: unexpected answer: {exc}") from None

    def trace_id_of(self, event_id: str) -> str | None:
        # As a local ledger: the id exactly as stored (lowercase), not case-folded.
        event = self.get_event(event_id)
        return event.correlation_id if event is not None and event.id == event_id else None

    def get_chain(self, event_id: str) -> ChainNode:
        wanted = _check_id(event_id)
        try:
            data = self._get(f"{API_PREFIX}/events/{quote(wanted, safe='')}/chain")
        except _Missing:
            raise EventNotFoundError(event_id) from None
        if not isinstance(data, dict) or not isinstance(data.get("events"), list):
            raise StoreError(f"{self._base}: unexpected answer (no 'events' list)")
        try:
            return chain_from_json(data["events"])
        except InvalidInputError as exc:
            raise StoreError(f"{self._base}: the chain in its answer is malformed: {exc}") from None

    def _history(
        self, external_id: Any, object_type: ObjectType | str | None
    ) -> tuple[str, dict[str, Any]]:
        """The path and parameters that page through an object's history, oldest first."""
        wanted = _check_external_id(external_id)
        if object_type is None:
            return f"{API_PREFIX}/events", {"object_id": [wanted], "order": "asc"}
        kind = ObjectType.parse(object_type, "object_type").value
        return f"{API_PREFIX}/objects/{kind}/{quote(wanted, safe='')}/history", {}

    def object_history(
        self,
        external_id: str,
        object_type: ObjectType | str | None = None,
        *,
        limit: int | None = None,
    ) -> list[TraceEvent]:
        _check_limit(limit)
        path, params = self._history(external_id, object_type)
        if limit == 0:
            self._check_open()
            return []
        return list(self._pages(path, params, limit, page_size=MAX_PAGE))

    def iter_object_history(
        self, external_id: str, object_type: ObjectType | str | None = None
    ) -> Generator[TraceEvent, None, None]:
        path, params = self._history(external_id, object_type)
        self._check_open()
        return self._pages(path, params, None, page_size=_STREAM_PAGE)

    def count_object_history(
        self, external_id: str, object_type: ObjectType | str | None = None
    ) -> int:
        params: dict[str, Any] = {"object_id": [_check_external_id(external_id)]}
        if object_type is not None:
            params["object_type"] = [ObjectType.parse(object_type, "object_type").value]
        return self._count(params)

    def summary(self, *, days: int | None = None) -> LedgerSummary:
        return summary_from_json(self._stats(days))

    def _stats(self, days: int | None) -> dict[str, Any]:
        if days is not None and (isinstance(days, bool) or not isinstance(days, int) or days < 0):
            raise InvalidInputError("days", f"must be a non-negative integer or None, got {days!r}")
        data = self._get(f"{API_PREFIX}/stats", {} if days is None else {"days": days})
        if not isinstance(data, dict):
            raise StoreError(f"{self._base}: unexpected answer (stats)")
        return data

    def size_bytes(self) -> tuple[int, int]:
        """``(data, log)`` of the service's own ledger, as its ``stats`` reports them."""
        data = self._stats(0)
        size, wal = data.get("size_bytes"), data.get("wal_bytes")
        if not isinstance(size, int) or not isinstance(wal, int):
            raise StoreError(f"{self._base}: unexpected answer (size_bytes)")
        return size, wal

    def check(self) -> list[str]:
        """Whether the service can read its ledger (``/readyz``) and takes this token: an
        empty list when both hold. The integrity checks of the service's own ledger are
        not run from here: they run where that ledger is."""
        self._check_open()
        problems: list[str] = []
        try:
            self._get("/readyz")
        except StoreError as exc:
            problems.append(str(exc))
        except _Missing:
            problems.append(f"{self._base}/readyz is missing: is this a decision-trace service?")
        else:
            try:
                self._stats(0)
            except StoreError as exc:
                problems.append(str(exc))
        return problems

    def close(self) -> None:
        """Make every later call raise :class:`StoreError`. Idempotent (nothing to
        release: each request has its own connection)."""
        self._closed = True


def _nothing() -> Generator[TraceEvent, None, None]:
    yield from ()
