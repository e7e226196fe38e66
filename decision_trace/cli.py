"""The ``decision-trace`` command: ask the ledger "who did this, and why?" from a terminal.

One click group, one function per command. Every command takes ``--db PATH|URL``
(default: the library's default ledger) and ``--json`` (one JSON object per line for
lists); ``copy`` takes ``--from`` and ``--to`` instead of ``--db``. Data
goes to stdout, messages to stderr; a user's mistake is one ``Error:`` line on stderr and
a non-zero exit, never a traceback. Read commands never create a database.

This module formats and parses; it reads and prunes through a
:class:`~decision_trace.storage.Ledger` and knows no SQL.
"""

from __future__ import annotations

import calendar
import csv
import itertools
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, nullcontext
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from .errors import (
    DecisionTraceError,
    InvalidInputError,
    RejectedRecordsError,
    UnshippedEventsError,
)
from .models import (
    Actor,
    ActorType,
    ChainNode,
    ObjectType,
    Outcome,
    TraceEvent,
    TrackedObject,
    clean_text,
)
from .record import EventRecord, datetime_from_ns, ns_from_datetime
from .serialize import (
    chain_to_json,
    destination_status_to_json,
    event_to_json,
    summary_to_json,
)
from .storage import EventFilters, Ledger, default_target, is_url, open_ledger
from .storage.outbox import SHIP_TO_ENV_VAR, SHIP_TOKEN_ENV_VAR, Outbox

__all__ = ["event_to_json", "main"]

F = TypeVar("F", bound=Callable[..., Any])

if TYPE_CHECKING:
    _ParamType = click.ParamType[Any, Any]
else:  # older click releases have no generic ParamType at run time
    _ParamType = click.ParamType

_EVENT_ID = re.compile(r"^[0-9a-f]{4,16}$")
_EVENT_ID_LENGTH = 16
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_MAX_WIDTH = 100


# --- errors: one line on stderr, never a traceback ------------------------------------


class _Fail(click.ClickException):
    """A one-line error (``Error: ...`` on stderr), exit status 1."""

    exit_code = 1


class _UsageFail(_Fail):
    """A mistake in the command line, as one line, exit status 2 (as click's usage errors)."""

    exit_code = 2


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _usage_failure(exc: click.UsageError) -> _UsageFail:
    path = exc.ctx.command_path if exc.ctx is not None else "decision-trace"
    message = _one_line(exc.format_message())
    return _UsageFail(f"{message} (see '{path} --help')")


def _failure(exc: BaseException) -> _Fail:
    if isinstance(exc, DecisionTraceError):
        return _Fail(_one_line(str(exc)))
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return _Fail(f"{_one_line(exc.strerror or str(exc))}{where}")
    return _Fail(f"unexpected {type(exc).__name__}: {_one_line(str(exc))}")


class _Group(click.Group):
    """A group that turns every error into one ``Error:`` line and lists its commands
    in the order they are defined (the order a support agent needs them)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _usage_failure(exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _usage_failure(exc) from exc
        except (click.ClickException, click.exceptions.Exit, click.Abort, BrokenPipeError):
            raise
        except (KeyboardInterrupt, EOFError):
            raise
        except Exception as exc:
            raise _failure(exc) from exc


# --- parameter types -------------------------------------------------------------------

_UNITS = {
    name: seconds
    for seconds, names in (
        (1, "s sec secs second seconds"),
        (60, "m min mins minute minutes"),
        (3600, "h hr hrs hour hours"),
        (86400, "d day days"),
        (604800, "w week weeks"),
    )
    for name in names.split()
}
_MONTHS = {
    name: months
    for months, names in (
        (1, "mo mos mon mons month months"),
        (12, "y yr yrs year years"),
    )
    for name in names.split()
}
_RELATIVE = re.compile(r"^(\d{1,9})\s*([a-z]+)(?:\s+ago)?$")


def _months_before(moment: datetime, months: int) -> datetime:
    """The same day and time ``months`` calendar months earlier (the month's last day
    when it is shorter: 6 months before 31 August is 28 or 29 February)."""
    index = moment.year * 12 + (moment.month - 1) - months
    year, month = divmod(index, 12)
    if year < 1:
        raise OverflowError
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An aware UTC datetime from ISO 8601 (naive means UTC) or a relative age.

    ``15m``, ``2h``, ``7d``, ``2w``, ``6mo``, ``1y`` (also ``90 days``, ``3 hours ago``)
    mean that long before ``now``; months and years are calendar months and years.

    Raises:
        ValueError: the text is neither.
    """
    value = text.strip()
    relative = _RELATIVE.match(value.lower())
    if relative and (relative.group(2) in _UNITS or relative.group(2) in _MONTHS):
        amount, unit = int(relative.group(1)), relative.group(2)
        current = now or datetime.now(timezone.utc)
        try:
            if unit in _MONTHS:
                return _months_before(current, amount * _MONTHS[unit])
            return current - timedelta(seconds=amount * _UNITS[unit])
        except OverflowError:
            raise ValueError(f"{text!r} reaches back before year 1") from None
    iso = value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value
    try:
        parsed = datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(
            f"expected ISO 8601 (2024-01-31, 2024-01-31T14:00Z) or a relative time "
            f"(15m, 2h, 30d, 6mo, 1y), got {text!r}"
        ) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00+05:00 is before year 1 in UTC
        raise ValueError(f"{text!r} is before year 1 or after year 9999 in UTC") from None


class _TimeType(_ParamType):
    name = "WHEN"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            return parse_time(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _EnumType(_ParamType):
    """A closed vocabulary, typed as users read it: any case, ``-`` or space for ``_``."""

    def __init__(self, enum: Any) -> None:
        self.enum = enum
        self.name = enum.__name__.upper()

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, self.enum):
            return value
        wanted = re.sub(r"[\s-]+", "_", str(value).strip())
        try:
            return self.enum.parse(wanted, self.name.lower())
        except InvalidInputError:
            valid = ", ".join(m.value for m in self.enum)
            self.fail(f"{str(value)!r} is not one of: {valid}", param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "|".join(m.value for m in self.enum)


def parse_object_ref(text: str) -> tuple[ObjectType, str]:
    """``order:ord-123`` -> ``(ObjectType.ORDER, "ord-123")``; the type in any case.

    Raises:
        ValueError: no ``TYPE:ID`` shape, an unknown type or an empty id.
    """
    kind, sep, external_id = text.partition(":")
    if not sep or not kind.strip() or not external_id.strip():
        raise ValueError(f"expected TYPE:ID, like order:ord-123, got {text!r}")
    try:
        object_type = ObjectType.parse(re.sub(r"[\s-]+", "_", kind.strip()), "object type")
    except InvalidInputError:
        valid = ", ".join(m.value for m in ObjectType)
        raise ValueError(f"unknown object type {kind!r} in {text!r}; one of: {valid}") from None
    return object_type, external_id


def parse_object_target(text: str) -> tuple[ObjectType | None, str, str | None]:
    """What ``why`` was given: ``(type, id, None)`` for ``TYPE:ID``, else
    ``(None, text, why it is not TYPE:ID)``: an id to find among every object type."""
    try:
        object_type, external_id = parse_object_ref(text)
    except ValueError as exc:
        return None, text, str(exc)
    return object_type, external_id, None


class _ObjectTargetType(_ParamType):
    name = "[TYPE:]ID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        text = str(value)
        if not text.strip():
            self.fail("expected an object id (ord-123) or TYPE:ID (order:ord-123)", param, ctx)
        return parse_object_target(text)


class _ObjectRefType(_ParamType):
    name = "TYPE:ID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            return parse_object_ref(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _EventIdType(_ParamType):
    name = "EVENT_ID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value).strip().lower()
        if re.fullmatch(r"[0-9a-f]{1,3}", text):
            self.fail(
                f"{str(value)!r} is too short: give at least 4 of the event id's 16 hex characters",
                param,
                ctx,
            )
        if not _EVENT_ID.match(text):
            self.fail(
                f"{str(value)!r} is not an event id (16 hex characters, as shown by "
                "'decision-trace events', or a unique start of one: at least 4)",
                param,
                ctx,
            )
        return text


class _TraceIdType(_ParamType):
    name = "TRACE_ID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value).strip().lower()
        if not _TRACE_ID.match(text):
            self.fail(
                f"{str(value)!r} is not a trace id (32 hex characters, as shown by "
                "'decision-trace show' under Trace)",
                param,
                ctx,
            )
        return text


class _LedgerType(_ParamType):
    """A ledger: a URL (``scheme://...``), passed on untouched, or a file path, checked as
    ``click.Path(dir_okay=False)`` checks it (a directory is a usage error). Either way a
    string: a URL must never go through :class:`~pathlib.Path`, which would turn
    ``//`` into ``/``."""

    name = "PATH|URL"

    def __init__(self) -> None:
        self._path = click.Path(dir_okay=False)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        if is_url(text):
            return text
        return os.fspath(self._path.convert(text, param, ctx))


TIME = _TimeType()
OBJECT_REF = _ObjectRefType()
OBJECT_TARGET = _ObjectTargetType()
EVENT_ID = _EventIdType()
TRACE_ID = _TraceIdType()
LEDGER = _LedgerType()


def _resolve_event_id(ledger: Ledger, text: str) -> str:
    """The full id of the one stored event whose id starts with ``text`` (a full id is
    returned as it is), as git resolves a short commit id."""
    if len(text) == _EVENT_ID_LENGTH:
        return text
    shown = 5
    found = ledger.event_ids_with_prefix(text, limit=shown + 1)
    if not found:
        raise _Fail(f"no event id starts with {text!r} in {ledger.location}")
    if len(found) > 1:
        listed = ", ".join(found[:shown]) + (", ..." if len(found) > shown else "")
        how_many = f"more than {shown}" if len(found) > shown else str(len(found))
        raise _Fail(
            f"{text!r} is ambiguous: {how_many} event ids start with it ({listed}); "
            "type more of the id"
        )
    return found[0]


# --- shared options ---------------------------------------------------------------------


def _db_option(f: F) -> F:
    return click.option(
        "--db",
        "db",
        type=LEDGER,
        default=None,
        metavar="PATH|URL",
        help="The ledger: a file (SQLite), or a postgresql:// URL. Default: $DECISION_TRACE_DB, "
        "else the library's default (~/.local/share/decision-trace/traces.db, or under "
        "$XDG_DATA_HOME).",
    )(f)


def _json_option(f: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Machine output: JSON, one object per line."
    )(f)


def _common(f: F) -> F:
    return _db_option(_json_option(f))


def _filter_options(f: F) -> F:
    options = [
        click.option(
            "--type",
            "event_types",
            multiple=True,
            metavar="TYPE",
            help="Event type, e.g. order.refunded (repeat for any of several).",
        ),
        click.option(
            "--actor-type",
            "actor_types",
            multiple=True,
            type=_EnumType(ActorType),
            help="Kind of actor, any case (repeatable).",
        ),
        click.option(
            "--actor",
            "actor_ids",
            multiple=True,
            metavar="ID",
            help="Actor id, e.g. cust-123 or pricing-ai (repeatable).",
        ),
        click.option(
            "--object",
            "object_ref",
            type=OBJECT_REF,
            default=None,
            help="Events that touched this object, e.g. order:ord-123.",
        ),
        click.option(
            "--tag", "tags", multiple=True, metavar="TAG", help="Events with this tag (repeatable)."
        ),
        click.option("--outcome", type=_EnumType(Outcome), default=None, help="Outcome, any case."),
        click.option(
            "--since",
            type=TIME,
            default=None,
            help="At or after: ISO 8601 (naive is UTC) or an age like 15m, 2h, 7d.",
        ),
        click.option(
            "--until", type=TIME, default=None, help="Before: ISO 8601 or an age like 1h."
        ),
        click.option(
            "--trace",
            "trace_id",
            type=TRACE_ID,
            default=None,
            help="Events of this trace (its 32-hex trace id, as 'show' prints it).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _filters(
    event_types: Sequence[str],
    actor_types: Sequence[ActorType],
    actor_ids: Sequence[str],
    object_ref: tuple[ObjectType, str] | None,
    tags: Sequence[str],
    outcome: Outcome | None,
    since: datetime | None,
    until: datetime | None,
    trace_id: str | None = None,
) -> EventFilters:
    if since is not None and until is not None and since >= until:
        raise click.UsageError(f"--since ({_when(since)}) must be before --until ({_when(until)})")
    return EventFilters.build(
        start=since,
        end=until,
        event_types=list(event_types) or None,
        actor_types=list(actor_types) or None,
        actor_ids=list(actor_ids) or None,
        object_types=[object_ref[0]] if object_ref else None,
        object_ids=[object_ref[1]] if object_ref else None,
        tags=list(tags) or None,
        outcome=outcome,
        correlation_id=trace_id,
    )


def _target(db: str | None) -> str:
    """The ledger a command reads: its own ``--db``, else the group's ``--db`` (given
    before the command name), else $DECISION_TRACE_DB or the default file."""
    if db is None:
        context = click.get_current_context(silent=True)
        db = context.obj if context is not None else None
    return db if db is not None else default_target()


@contextmanager
def _open(db: str | None, *, write: bool = False, option: str = "--db PATH") -> Iterator[Ledger]:
    """The existing ledger (never created here; opened read-only unless ``write``),
    closed afterwards. A file path is checked here, so that a missing or empty file gets
    a message naming ``option``; a URL goes to ``open_ledger`` untouched, which reports
    a missing ledger itself."""
    target = _target(db)
    if not is_url(target):
        path = Path(target).expanduser()
        if not path.exists():
            raise _Fail(
                f"no decision-trace database at {path} (record some events first, "
                f"or pass {option} / set DECISION_TRACE_DB)"
            )
        if path.is_file() and path.stat().st_size == 0:
            raise _Fail(f"{path} is empty, not a decision-trace database")
        target = str(path)
    ledger = open_ledger(target, create=False, read_only=not write)
    try:
        yield ledger
    finally:
        ledger.close()


def _ledger_file(ledger: Ledger) -> Path | None:
    """The file the ledger is, or None when it is not one (a ledger named by URL)."""
    return None if is_url(ledger.location) else Path(ledger.location)


# --- output helpers ---------------------------------------------------------------------


def _color() -> bool | None:
    """None lets click colour only a terminal; NO_COLOR turns colour off everywhere."""
    return False if os.environ.get("NO_COLOR") else None


def _out(text: str = "") -> None:
    click.echo(text, color=_color())


def _err(text: str) -> None:
    click.echo(text, err=True, color=_color())


def _is_tty(stream: IO[Any]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _width() -> int:
    """Columns to fill: the terminal's (at most 100), or 80 when not a terminal."""
    if not _is_tty(sys.stdout):
        return 80
    return max(40, min(shutil.get_terminal_size((80, 24)).columns, _MAX_WIDTH))


class _Glyphs:
    def __init__(self, unicode: bool) -> None:
        self.arrow = "→" if unicode else "->"
        self.tee = "├─ " if unicode else "|- "
        self.last = "└─ " if unicode else "`- "
        self.pipe = "│  " if unicode else "|  "
        self.ellipsis = "…" if unicode else "..."
        self.dot = "·" if unicode else "-"
        self.mark = "◀" if unicode else "<"


def _glyphs() -> _Glyphs:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "→├└│─…·◀".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return _Glyphs(unicode=False)
    return _Glyphs(unicode=True)


# Control characters (terminal escape sequences), zero-width and bidi-override characters:
# recorded text comes from customers and agents and must not drive the terminal.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _safe(text: Any, multiline: bool = False) -> str:
    """Text fit for a terminal: unsafe characters shown escaped, tabs as spaces and (unless
    ``multiline``) line breaks as ``\\n``."""
    value = str(text).replace("\t", " ")
    if not multiline:
        value = value.replace("\r\n", "\\n").replace("\n", "\\n")
    return _UNSAFE.sub(_escape, value.replace("\r\n", "\n") if multiline else value)


def _wrap(
    text: str,
    indent: str,
    first: str | None = None,
    width: int | None = None,
    bold_first: bool = False,
) -> str:
    """``text`` wrapped to the width, first line prefixed ``first`` (default ``indent``),
    that prefix in bold if ``bold_first``."""
    width = width or _width()
    lines: list[str] = []
    prefix = indent if first is None else first
    for paragraph in _safe(text, multiline=True).split("\n"):
        wrapped = textwrap.wrap(
            paragraph,
            width=max(20, width),
            initial_indent=prefix,
            subsequent_indent=indent,
            break_on_hyphens=False,
        ) or [prefix.rstrip()]
        lines.extend(wrapped)
        prefix = indent
    if bold_first and first:
        lines[0] = click.style(first, bold=True) + lines[0][len(first) :]
    return "\n".join(lines)


def _fit(text: str, width: int) -> str:
    g = _glyphs()
    if len(text) <= width:
        return text
    return text[: max(0, width - len(g.ellipsis))] + g.ellipsis


def _fit_words(text: str, width: int) -> str:
    """``text`` cut to ``width`` at a word boundary, ending with an ellipsis when cut
    (mid-word only when its last word is longer than half the width, a URL say)."""
    g = _glyphs()
    if len(text) <= width:
        return text
    room = max(0, width - len(g.ellipsis))
    cut = text[:room]
    if not text[room].isspace():
        space = cut.rfind(" ")
        if space >= room // 2:
            cut = cut[:space]
    return cut.rstrip(" ,;:" + g.dot) + g.ellipsis


def _when(moment: datetime, precise: bool = False) -> str:
    moment = moment.astimezone(timezone.utc)
    if precise:
        return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    if seconds <= 0:
        return "0 ms"
    if seconds < 1:
        ms = seconds * 1000
        if ms < 0.1:
            return "<0.1 ms"
        return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} days {hours} h"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"  # pragma: no cover


def _value(value: Any) -> str:
    """A context/state value for humans: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# --- money: amounts with their currency's decimals ----------------------------------------

_MINOR_UNITS: dict[str, int] = {
    code: decimals
    for decimals, codes in (
        (0, "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"),
        (3, "BHD IQD JOD KWD LYD OMR TND"),
        (4, "CLF UYW"),
    )
    for code in codes.split()
}
"""ISO 4217 currencies whose minor unit is not the cent (2 decimals, the default)."""

_MONEY_KEYS = frozenset({"amount", "total", "subtotal", "price", "cost", "change"})
_MONEY_SUFFIXES = ("_amount", "_total", "_price", "_cost")
"""State keys that hold money when the state names a currency: what EcommerceClient
stores (``total``, ``amount``, ``refund_amount``, ``order_total``, ``price`` and a
price's ``change``, ``cost``, line items' ``price`` and ``unit_price``) and their kin."""

_CURRENCY_CODE = re.compile(r"^[A-Za-z]{3}$")
_DECIMAL = re.compile(r"^-?\d+(\.\d+)?$")


def _currency_in(state: Mapping[str, Any] | None) -> str | None:
    """The ISO 4217 code a state's ``currency`` holds, upper-case, or None."""
    code = (state or {}).get("currency")
    if isinstance(code, str) and _CURRENCY_CODE.match(code.strip()):
        return code.strip().upper()
    return None


def _currency_of(obj: TrackedObject) -> str | None:
    """The currency of an object's amounts: its state's, else its state after or before."""
    for state in (obj.state, obj.state_after, obj.state_before):
        code = _currency_in(state)
        if code is not None:
            return code
    return None


def _is_money_key(key: str) -> bool:
    name = key.lower()
    return name in _MONEY_KEYS or name.endswith(_MONEY_SUFFIXES)


def _amount(value: Any, currency: str) -> str | None:
    """A number with at least its currency's decimals (``89.00``, ``1000`` for JPY), and
    more only when it has more (``0.125``: never rounded away); None for a non-number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, float):
        amount = Decimal(repr(value))  # the shortest decimal that reads back as the float
    elif isinstance(value, str) and _DECIMAL.match(value.strip()):
        amount = Decimal(value.strip())  # an amount a float cannot hold is stored as text
    else:
        return None
    if not amount.is_finite():
        return None
    exponent = amount.normalize().as_tuple().exponent
    decimals = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    return f"{amount:.{max(_MINOR_UNITS.get(currency, 2), decimals)}f}"


def _money_json(value: Any, currency: str, money: bool = False) -> str:
    """``value`` as ``_value`` prints it (JSON, keys sorted), amounts under money keys of
    nested mappings (line items' prices) with the currency's decimals."""
    if isinstance(value, dict):
        parts = [
            json.dumps(str(k), ensure_ascii=False)
            + ": "
            + _money_json(v, currency, _is_money_key(str(k)))
            for k, v in sorted(value.items(), key=lambda item: str(item[0]))
        ]
        return "{" + ", ".join(parts) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_money_json(v, currency) for v in value) + "]"
    if money and not isinstance(value, str):
        amount = _amount(value, currency)
        if amount is not None:
            return amount
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _state_value(key: str, value: Any, currency: str | None) -> tuple[str, bool]:
    """A state value for humans, and whether it was printed as money in ``currency``:
    ``89.00 USD`` for an amount under a money key, else as :func:`_value`."""
    if currency is None:
        return _value(value), False
    if _is_money_key(key):
        amount = _amount(value, currency)
        if amount is not None:
            return f"{amount} {currency}", True
    if isinstance(value, (dict, list, tuple)):
        return _money_json(value, currency), False
    return _value(value), False


def _state_items(state: Mapping[str, Any], currency: str | None) -> list[tuple[str, str]]:
    """``(key, text)`` of a state's fields; its ``currency`` is left out when the amounts
    beside it already name it."""
    items = [(key, *_state_value(key, value, currency)) for key, value in state.items()]
    named = any(is_money for _, _, is_money in items) and _currency_in(state) == currency
    return [(key, text) for key, text, _ in items if not (named and key == "currency")]


def _actor(actor: Actor | None, full: bool = False) -> str:
    """``ai_agent pricing-ai "Dynamic Pricing" (model gpt-4)``: the kind, then who."""
    if actor is None:
        return "unknown actor"
    text = f"{actor.type.value} {actor.id}"
    if actor.name and actor.name != actor.id:
        text += f' "{actor.name}"'
    extras = []
    if actor.role:
        extras.append(f"role {actor.role}")
    if actor.model:
        extras.append(f"model {actor.model}")
    if actor.version:
        extras.append(f"version {actor.version}")
    if actor.service_name:
        extras.append(f"service {actor.service_name}")
    if full and actor.email:
        extras.append(actor.email)
    if extras:
        text += f" ({', '.join(extras)})"
    return _safe(text)


def _style_outcome(event: TraceEvent) -> str:
    colour = {Outcome.SUCCESS: "green", Outcome.FAILURE: "red", Outcome.PENDING: "yellow"}
    return click.style(event.outcome.value, fg=colour[event.outcome])


def _changes(obj: TrackedObject) -> list[str]:
    """``status: pending → refunded`` for each field that differs before and after."""
    if obj.state_before is None and obj.state_after is None:
        return []
    g = _glyphs()
    before = dict(obj.state_before or {})
    after = dict(obj.state_after or {})
    currency = _currency_of(obj)
    old_currency = _currency_in(before) or currency
    new_currency = _currency_in(after) or currency
    lines = []
    for key in list(dict.fromkeys([*before, *after])):
        old = _state_value(key, before[key], old_currency)[0] if key in before else "(none)"
        new = _state_value(key, after[key], new_currency)[0] if key in after else "(none)"
        if key in before and key in after and before[key] == after[key]:
            continue
        lines.append(f"{key}: {old} {g.arrow} {new}")
    return lines or ["(no change)"]


def _rejections(event: TraceEvent) -> list[tuple[str, str]]:
    """``(alternative, why it was rejected)`` for every alternative considered.

    The alternative is named by its ``action`` (or ``name``); its other fields follow in
    parentheses, and the reason is looked up in ``rejection_reasons`` by that name.
    """
    decision = event.decision
    if decision is None:
        return []
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for alternative in decision.alternatives:
        key = "action" if "action" in alternative else "name" if "name" in alternative else None
        name = _value(alternative[key]) if key else _value(dict(alternative))
        seen.add(name)
        details = [
            _value(v) if k in ("reason", "description") else f"{k}={_value(v)}"
            for k, v in alternative.items()
            if key and k != key
        ]
        label = f"{name} ({'; '.join(details)})" if details else name
        pairs.append((label, decision.rejection_reasons.get(name, "(no reason recorded)")))
    for name, reason in decision.rejection_reasons.items():
        if name not in seen:
            pairs.append((name, reason))
    return pairs


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=True, separators=(",", ":")))


def _print_event_brief(event: TraceEvent) -> None:
    """The block ``events`` and ``search`` print per event (3 lines or so)."""
    width = _width()
    g = _glyphs()
    head = f"{event.id}  {_when(event.timestamp)}  "
    kind = _fit(_safe(event.event_type), max(10, width - len(head) - 9))
    line = click.style(event.id, fg="bright_black") + head[len(event.id) :]
    line += click.style(kind, bold=True)
    if event.outcome is not Outcome.SUCCESS:
        line += "  " + _style_outcome(event)
    _out(line)
    who = _actor(event.actor)
    what = f" {g.dot} {event.description}" if event.description else ""
    _out(_wrap(who + what, "    "))
    if event.decision and event.decision.reasoning:
        _out(_wrap(event.decision.reasoning, " " * 9, first="    why: "))
    if event.error:
        _out(_wrap(event.error, " " * 11, first="    error: "))


def _print_list(events: Iterable[TraceEvent], as_json: bool) -> int:
    """Print each event (a block, or a JSON line); return how many."""
    count = 0
    for count, event in enumerate(events, 1):
        if as_json:
            _print_json(event_to_json(event))
            continue
        if count > 1:
            _out()
        _print_event_brief(event)
    return count


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _limit(value: int) -> int | None:
    """0 means no limit; a limit beyond any ledger's size is no limit either."""
    return None if value == 0 or value >= sys.maxsize else value


_LIMIT_HELP = "Show at most this many (0 for all)."


# --- the commands -----------------------------------------------------------------------


@click.group("decision-trace", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="decision-trace-otel", prog_name="decision-trace")
@_db_option
@click.pass_context
def main(ctx: click.Context, db: str | None) -> None:
    """Ask the decision-trace ledger who did what, to which object, and why.

    \b
    Examples:
      decision-trace why order:ord-123
      decision-trace events --actor-type ai_agent --since 2h
      decision-trace show 3f2a9c0d1e2b4a5f
      decision-trace search "price increase"

    Every command reads $DECISION_TRACE_DB (or the default ledger) unless given
    --db PATH|URL (before or after the command name), and prints JSON with --json.
    Times are UTC.
    """
    ctx.obj = db


@main.command(short_help="List events, newest first, with filters.")
@_filter_options
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(min=0),
    metavar="N",
    help=_LIMIT_HELP,
)
@_common
def events(
    db: str | None,
    as_json: bool,
    limit: int,
    event_types: tuple[str, ...],
    actor_types: tuple[ActorType, ...],
    actor_ids: tuple[str, ...],
    object_ref: tuple[ObjectType, str] | None,
    tags: tuple[str, ...],
    outcome: Outcome | None,
    since: datetime | None,
    until: datetime | None,
    trace_id: str | None,
) -> None:
    """List events, newest first, filtered by type, actor, object, tag, outcome, time.

    \b
    Examples:
      decision-trace events --since 2h
      decision-trace events --actor-type ai_agent --outcome failure
      decision-trace events --object order:ord-123 --json
      decision-trace events --type order.refunded --since 2024-01-01 --until 7d
      decision-trace events --trace 4bf92f3577b34da6a3ce929d0e0e4736
    """
    filters = _filters(
        event_types, actor_types, actor_ids, object_ref, tags, outcome, since, until, trace_id
    )
    with _open(db) as ledger:
        # Streamed: printing starts at once and memory stays bounded with --limit 0.
        with closing(ledger.iter_events(filters, order="desc")) as stream:
            shown = _print_list(islice(stream, _limit(limit)), as_json)
        if as_json:
            return
        if not shown:
            _err("No events match.")
        elif shown == limit and (total := ledger.count(filters)) > shown:
            _err(f"Showing the newest {shown:,} of {total:,} events (--limit 0 shows all).")


@main.command(short_help="One event in full.")
@click.argument("event_id", type=EVENT_ID)
@_common
def show(db: str | None, as_json: bool, event_id: str) -> None:
    """Show one event in full: who, why, the alternatives, the objects it changed.

    EVENT_ID is the event's 16 hex characters, or a unique start of them (at least 4).

    \b
    Examples:
      decision-trace show 3f2a9c0d1e2b4a5f
      decision-trace show 3f2a9c0d
      decision-trace show 3f2a9c0d1e2b4a5f --json
    """
    with _open(db) as ledger:
        event_id = _resolve_event_id(ledger, event_id)
        event = ledger.get_event(event_id)
        path = ledger.location
    if event is None:
        raise _Fail(f"no event with id {event_id!r} in {path}")
    if as_json:
        _print_json(event_to_json(event))
        return
    _print_event_full(event)


def _print_event_full(event: TraceEvent) -> None:
    g = _glyphs()
    label_width = 13
    indent = " " * label_width

    def field(label: str, value: str) -> None:
        _out(_wrap(value, indent, first=label.ljust(label_width), bold_first=True))

    def heading(label: str) -> None:
        _out(click.style(label, bold=True))

    field("Event", event.id)
    field("Type", _safe(event.event_type))
    if event.description:
        field("Description", event.description)
    field("When", _when(event.timestamp, precise=True))
    field("Duration", _duration(event.duration))
    outcome = event.outcome.value + (f": {event.error}" if event.error else "")
    field("Outcome", outcome)
    field("Actor", _actor(event.actor, full=True))
    if event.actor is not None and event.actor.metadata:
        for key, value in event.actor.metadata.items():
            _out(_wrap(f"{key}: {_value(value)}", indent + "  ", first=indent))
    decision = event.decision
    if decision is not None:
        if decision.reasoning:
            field("Reasoning", decision.reasoning)
        if decision.confidence is not None:
            field("Confidence", f"{decision.confidence:g}")
        if decision.risk_level is not None:
            field("Risk", decision.risk_level.value)
        if decision.context:
            heading("Context")
            for key, value in decision.context.items():
                _out(_wrap(f"{key}: {_value(value)}", "    ", first="  "))
        rejected = _rejections(event)
        if rejected:
            heading("Alternatives (rejected)")
            for label, reason in rejected:
                _out(_wrap(f"{label}: {reason}", "    ", first="  - "))
    if event.objects:
        heading("Objects")
        for obj in event.objects:
            _out(_wrap(f"{obj.object_type.value} {obj.external_id}", "    ", first="  "))
            if obj.state:
                for key, text in _state_items(obj.state, _currency_of(obj)):
                    _out(_wrap(f"{key}: {text}", "        ", first="    "))
            if obj.state_before is not None or obj.state_after is not None:
                for change in _changes(obj):
                    _out(_wrap(change, "        ", first=f"    {g.arrow.strip()} "))
    if event.tags:
        field("Tags", ", ".join(event.tags))
    if event.metadata:
        heading("Metadata")
        for key, value in event.metadata.items():
            _out(_wrap(f"{key}: {_value(value)}", "    ", first="  "))
    field("Trace", event.correlation_id)
    field("Parent", event.parent_event_id or "(none: a root event)")
    if event.service_name:
        field("Service", event.service_name)


@main.command(short_help="An object's story: when, who, what, why.")
@click.argument("target", metavar="[TYPE:]ID", type=OBJECT_TARGET)
@click.option(
    "--limit", default=0, type=click.IntRange(min=0), metavar="N", help="Oldest N only (0: all)."
)
@_common
def why(
    db: str | None,
    as_json: bool,
    target: tuple[ObjectType | None, str, str | None],
    limit: int,
) -> None:
    """Tell an object's story, oldest first: when, who, what, why, what changed.

    The object is TYPE:ID, or only its ID when one type of object has that id (if
    several do, they are listed, to choose one as TYPE:ID).

    \b
    Examples:
      decision-trace why order:ord-123
      decision-trace why ord-123
      decision-trace why inventory:SKU-789
      decision-trace why customer:cust-456 --json
    """
    with _open(db) as ledger:
        object_type, external_id = _resolve_object(ledger, target)
        with closing(ledger.iter_object_history(external_id, object_type)) as stream:
            _print_history(ledger, stream, object_type, external_id, as_json, limit)


def _resolve_object(
    ledger: Ledger, target: tuple[ObjectType | None, str, str | None]
) -> tuple[ObjectType, str]:
    """The one object ``why`` was asked about: ``TYPE:ID`` as given, or the one type of
    object that has the id."""
    object_type, external_id, not_typed = target
    if object_type is not None:
        return object_type, external_id
    types = ledger.object_types_of(external_id)
    if len(types) == 1:
        return types[0], external_id
    if len(types) > 1:
        shown = repr(external_id)  # escapes what could drive a terminal
        listed = ", ".join(f"{kind.value}:{shown[1:-1]}" for kind in types)
        raise _Fail(f"{shown} is the id of {len(types)} objects ({listed}); give one as TYPE:ID")
    if ":" in external_id and not_typed is not None:
        # Not an id anything has, and not TYPE:ID either: say what is wrong with the type.
        raise _UsageFail(f"{not_typed} (see 'decision-trace why --help')")
    raise _Fail(f"no events about any object with id {external_id!r} in {ledger.location}")


def _print_history(
    ledger: Ledger,
    stream: Iterator[TraceEvent],
    object_type: ObjectType,
    external_id: str,
    as_json: bool,
    limit: int,
) -> None:
    """``why``'s output of the object's history ``stream``."""
    # Streamed: an object with a long history is printed as it is read.
    history = islice(stream, _limit(limit))
    first = next(history, None)
    if first is None:
        raise _Fail(f"no events about {object_type.value} {external_id!r} in {ledger.location}")
    if as_json:
        for event in itertools.chain([first], history):
            _print_json(event_to_json(event))
        return
    # Counted inside the stream's read transaction: the same snapshot it reads.
    total = ledger.count_object_history(external_id, object_type)
    _print_story(
        itertools.chain([first], history),
        object_type,
        external_id,
        min(total, limit or total),
    )


def _print_story(
    history: Iterable[TraceEvent], object_type: ObjectType, external_id: str, count: int
) -> None:
    """``why``'s text output: a title, then a block per event."""
    title = f"{object_type.value} {_safe(external_id)}: {_count(count, 'event')}"
    _out(click.style(title, bold=True))
    indent = " " * 13
    for event in history:
        _out()
        head = f"{_when(event.timestamp)}  "
        line = head + click.style(_fit(_safe(event.event_type), _width() - len(head)), bold=True)
        _out(line)

        def step(label: str, text: str) -> None:
            _out(_wrap(text, indent, first=f"  {label:<9}  "))

        step("who", _actor(event.actor))
        if event.description:
            step("what", event.description)
        if event.decision and event.decision.reasoning:
            step("why", event.decision.reasoning)
        for label, reason in _rejections(event):
            step("rejected", f"{label}: {reason}")
        for obj in event.objects:
            is_subject = obj.object_type is object_type and obj.external_id == external_id
            if is_subject and obj.state:
                items = _state_items(obj.state, _currency_of(obj))
                step("state", ", ".join(f"{key}: {text}" for key, text in items))
            for change in _changes(obj):
                prefix = "" if is_subject else f"{obj.object_type.value} {obj.external_id}: "
                step("changed", prefix + change)
        if event.outcome is not Outcome.SUCCESS:
            outcome = event.outcome.value + (f": {event.error}" if event.error else "")
            _out(
                _wrap(outcome, indent, first=f"  {'outcome':<9}  ").replace(
                    event.outcome.value, _style_outcome(event), 1
                )
            )
        _out(click.style(f"  {'event':<9}  {event.id}", fg="bright_black"))


@main.command(short_help="Full-text search; any text is safe.")
@click.argument("text", nargs=-1, required=True)
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(min=0),
    metavar="N",
    help=_LIMIT_HELP,
)
@_common
def search(db: str | None, as_json: bool, text: tuple[str, ...], limit: int) -> None:
    """Full-text search of descriptions, reasoning and context; every word must match.

    Any text is safe to type: quotes, AND, OR, *, - and parentheses are searched for
    as words, never parsed as query syntax. Put -- before text that starts with a
    dash (decision-trace search -- -v2).

    \b
    Examples:
      decision-trace search price increase margin
      decision-trace search "customer found better price" --limit 10
      decision-trace search defect --json
    """
    words = " ".join(text)
    with (
        _open(db) as ledger,
        closing(ledger.iter_search(words)) as stream,
    ):
        # Streamed, as for events: --limit 0 on a common word keeps memory bounded.
        found = _print_list(islice(stream, _limit(limit)), as_json)
    if found or as_json:
        return
    if not clean_text(words.replace("\x00", " ")).split():
        _err("No events match: the text has no words to search for.")
    else:
        _err(f"No events match {_safe(words)!r}.")


@main.command(short_help="An event's chain as a tree, with durations.")
@click.argument("event_id", type=EVENT_ID)
@click.option(
    "--why",
    "show_why",
    is_flag=True,
    help="Under each step, its reasoning in full (and its error, if it failed).",
)
@_common
def chain(db: str | None, as_json: bool, event_id: str, show_why: bool) -> None:
    """Show the chain an event belongs to: its topmost stored ancestor and every
    descendant, as an indented tree with durations.

    EVENT_ID is the event's 16 hex characters, or a unique start of them (at least 4).
    With --json, one event per line (depth first), each with its depth in the tree.

    \b
    Examples:
      decision-trace chain 3f2a9c0d1e2b4a5f
      decision-trace chain 3f2a9c0d --why
      decision-trace chain 3f2a9c0d1e2b4a5f --json
    """
    with _open(db) as ledger:
        event_id = _resolve_event_id(ledger, event_id)
        root = ledger.get_chain(event_id)
    if as_json:
        for row in chain_to_json(root):
            _print_json(row)
        return
    g = _glyphs()
    width = _width()

    # An explicit stack, not recursion: a chain may be thousands of events deep. Beyond
    # half the width, the indentation is cut to its nearest levels after a depth marker,
    # so that every line still fits the width however deep the chain.
    max_lead = max(20, width // 2)
    stack: list[tuple[ChainNode, int, str, str, str]] = [(root, 0, "", "", "")]
    while stack:
        node, depth, lead, branch, below = stack.pop()
        shown = lead
        if len(lead) > max_lead:
            marker = f"{g.ellipsis}[depth {depth}]"
            shown = marker + lead[len(lead) - max(3, max_lead - len(marker)) :]
        event = node.event
        head = f"{_safe(event.event_type)}  {_duration(event.duration)}  "
        tail = f"  {g.mark} this event" if event.id == event_id else ""
        room = max(20, width - len(shown + branch) - len(event.id) - len(tail))
        line = shown + branch + click.style(_fit(head, room), bold=True)
        line += click.style(event.id, fg="bright_black")
        if event.outcome is not Outcome.SUCCESS:
            line += " " + _style_outcome(event)
        _out(line + tail)
        detail = _actor(event.actor)
        detail_lead = shown + below + (g.pipe if node.children else "   ")
        if not show_why:
            if event.description:
                detail += f" {g.dot} {_safe(event.description)}"
            _out(detail_lead + _fit_words(detail, max(20, width - len(detail_lead))))
        else:
            # The step in full: who on one line, then what, why and any error, wrapped.
            _out(detail_lead + _fit_words(detail, max(20, width - len(detail_lead))))
            reasoning = event.decision.reasoning if event.decision else ""
            for label, text in (
                ("what", event.description),
                ("why", reasoning),
                ("error", event.error or ""),
            ):
                if text:
                    first = detail_lead + f"{label + ':':<7}"
                    _out(_wrap(text, detail_lead + " " * 7, first=first, width=width))
        last_index = len(node.children) - 1
        for index in range(last_index, -1, -1):  # pushed last first: popped in order
            last = index == last_index
            stack.append(
                (
                    node.children[index],
                    depth + 1,
                    lead + below,
                    g.last if last else g.tee,
                    "   " if last else g.pipe,
                )
            )


@main.command(short_help="Counts by type, actor, outcome and day; the ledger's size.")
@click.option(
    "--days",
    default=14,
    show_default=True,
    type=click.IntRange(min=0),
    help="Per-day counts for the newest N days with events (0: all).",
)
@_common
def stats(db: str | None, as_json: bool, days: int) -> None:
    """Count events by type, actor type, outcome and day; the time span; the ledger's
    size; and, for a ledger that ships, each destination's progress: shipped up to,
    backlog, the oldest event waiting, rejections and the last error.

    \b
    Examples:
      decision-trace stats
      decision-trace stats --days 30 --json
    """
    with _open(db) as ledger:
        summary = ledger.summary(days=_limit(days))
        location = ledger.location
        size, wal_size = ledger.size_bytes()
        shipping = ledger.outbox_status() if isinstance(ledger, Outbox) else []
        refused = {
            status.destination: ledger.rejections(status.destination, limit=_REJECTED_SHOWN)
            for status in shipping
            if status.rejected and isinstance(ledger, Outbox)
        }
    now_ns = time.time_ns()
    if as_json:
        data = summary_to_json(summary, location=location, size_bytes=size, wal_bytes=wal_size)
        data["shipping"] = [
            destination_status_to_json(s, now_ns=now_ns, rejections=refused.get(s.destination, []))
            for s in shipping
        ]
        _print_json(data)
        return

    def row(label: str, value: str) -> None:
        _out(_wrap(value, " " * 12, first=label.ljust(12), bold_first=True))

    row("Ledger", location)
    row("Size", _size(size) + (f" (+ {_size(wal_size)} write-ahead log)" if wal_size else ""))
    row("Schema", f"version {summary.schema_version}")
    row("Events", f"{summary.events:,}")
    if summary.first and summary.last:
        row("From", _when(summary.first))
        row("To", _when(summary.last))
        row("Covers", _duration(summary.last - summary.first))
    row("Objects", f"{summary.distinct_objects:,} ({summary.objects:,} links to events)")
    width = _width()

    def table(title: str, pairs: Iterable[tuple[str, int]]) -> None:
        items = list(pairs)
        if not items:
            return
        _out()
        _out(click.style(title, bold=True))
        names = [_safe(name) for name, _ in items]
        count_width = max(len(f"{n:,}") for _, n in items)
        room = min(max(len(name) for name in names), width - 4 - count_width)
        for name, (_, n) in zip(names, items, strict=True):
            _out(f"  {_fit(name, room):<{room}}  {n:>{count_width},}")

    table("By event type", summary.by_event_type)
    table("By actor type", ((k or "(no actor)", n) for k, n in summary.by_actor_type))
    table("By outcome", summary.by_outcome)
    shown = f"newest {days} days" if days and len(summary.by_day) == days else "every day"
    table(f"By day (UTC, {shown} with events)", summary.by_day)
    for status in shipping:
        _out()
        _out(click.style(f"Shipping to {_safe(status.destination)}", bold=True))
        row("Shipped to", f"position {status.position:,} ({status.shipped:,} events acknowledged)")
        backlog = f"{status.backlog:,} events"
        if status.oldest_unshipped_ns is not None:
            age = timedelta(microseconds=max(0, now_ns - status.oldest_unshipped_ns) // 1000)
            backlog += f", the oldest from {_duration(age)} ago"
        row("Backlog", backlog)
        row("Rejected", f"{status.rejected:,}")
        for item in refused.get(status.destination, [])[:3]:
            row("", _safe(f"{item.event_id}: {item.message}"))
        if status.last_error is not None:
            when = (
                f" ({_when(datetime_from_ns(status.last_error_ns))})"
                if status.last_error_ns is not None
                else ""
            )
            row("Last error", _safe(status.last_error) + when)


_CSV_COLUMNS = (
    "id",
    "timestamp",
    "duration_ms",
    "event_type",
    "description",
    "actor_type",
    "actor_id",
    "actor_name",
    "reasoning",
    "confidence",
    "risk_level",
    "outcome",
    "error",
    "tags",
    "objects",
    "context",
    "alternatives",
    "rejection_reasons",
    "actor",
    "metadata",
    "correlation_id",
    "parent_event_id",
    "service_name",
)


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet treat a cell as a formula (OWASP's CSV injection list)."""


def _csv_cell(value: Any) -> Any:
    """``value``, with a ``'`` in front when it is text a spreadsheet would run as a
    formula: the ledger holds text written by customers and agents, and an export is
    typically opened in one. A lone surrogate (JSON values keep them; UTF-8 cannot hold
    them) becomes U+FFFD, as in the plain text fields, instead of failing the export."""
    if isinstance(value, str):
        value = clean_text(value)
        if value.startswith(_FORMULA_STARTS):
            return "'" + value
    return value


def _csv_row(event: TraceEvent) -> list[Any]:
    return [_csv_cell(value) for value in _csv_fields(event)]


def _csv_fields(event: TraceEvent) -> list[Any]:
    data = event_to_json(event)
    decision = data["decision"] or {}
    actor = data["actor"] or {}

    def as_json(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    return [
        data["id"],
        data["timestamp"],
        data["duration_ms"],
        data["event_type"],
        data["description"],
        actor.get("type", ""),
        actor.get("id", ""),
        actor.get("name") or "",
        decision.get("reasoning", ""),
        "" if decision.get("confidence") is None else decision["confidence"],
        decision.get("risk_level") or "",
        data["outcome"],
        data["error"] or "",
        as_json(data["tags"]),
        as_json(data["objects"]),
        as_json(decision.get("context", {})),
        as_json(decision.get("alternatives", [])),
        as_json(decision.get("rejection_reasons", {})),
        as_json(data["actor"]),
        as_json(data["metadata"]),
        data["correlation_id"],
        data["parent_event_id"] or "",
        data["service_name"] or "",
    ]


_COMPANIONS = ("", "-wal", "-shm", "-journal")
"""The ledger file and the files SQLite keeps beside it."""


def _check_not_ledger(target: Path, ledger: Path) -> None:
    """Refuse an output path that is the ledger or one of its companion files: the same
    file (device and inode: through symbolic and hard links too), or the same name once
    symbolic links are resolved (a companion that does not exist yet)."""

    def resolve(path: Path) -> Path:
        try:
            return path.resolve()
        except (OSError, RuntimeError):  # a symbolic link loop
            return path.absolute()

    resolved = resolve(target)
    # SQLite names the companions after the path as given or after the file it points to.
    bases = {resolve(ledger.parent) / ledger.name, resolve(ledger)}
    try:
        target_stat: os.stat_result | None = target.stat()
    except OSError:
        target_stat = None
    for suffix in _COMPANIONS:
        companion = Path(f"{ledger}{suffix}")
        same = False
        for candidate in {Path(f"{base}{suffix}") for base in bases}:
            if resolved == candidate:
                same = True
            elif target_stat is not None:
                try:
                    found = candidate.stat()
                except OSError:
                    continue
                same = (found.st_dev, found.st_ino) == (target_stat.st_dev, target_stat.st_ino)
            if same:
                break
        if same:
            what = "the ledger itself" if not suffix else f"the ledger's {suffix[1:]} file"
            raise _UsageFail(
                f"--output {target} is {what} ({companion}): exporting there would "
                "destroy the ledger; choose another file"
            )


@contextmanager
def _output(path: str, ledger: Path | None) -> Iterator[IO[str]]:
    """stdout for ``-``; otherwise a private (0600) temporary file beside ``path`` that
    replaces it only when the export completes. Never the ledger file (``ledger``; None
    when the ledger is not a file) or its companions."""
    if path == "-":
        yield sys.stdout
        return
    target = Path(path).expanduser()
    if ledger is not None:
        _check_not_ledger(target, ledger)
    if target.is_dir():
        raise _Fail(f"{target} is a directory")
    if not target.parent.is_dir():
        raise _Fail(f"cannot write {target}: folder {target.parent} does not exist")
    fd, temp = tempfile.mkstemp(
        dir=target.parent if str(target.parent) else ".", prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as stream:
            yield stream
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


@main.command(short_help="Export events as JSON lines or CSV, streamed.")
@_filter_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"], case_sensitive=False),
    default=None,
    help="jsonl (default): one JSON object per event. csv: one row per event, with "
    "structured fields as JSON.",
)
@click.option(
    "-o",
    "--output",
    default="-",
    metavar="FILE",
    help="Write to FILE (created private, mode 0600) instead of stdout.",
)
@_common
def export(
    db: str | None,
    as_json: bool,
    fmt: str | None,
    output: str,
    event_types: tuple[str, ...],
    actor_types: tuple[ActorType, ...],
    actor_ids: tuple[str, ...],
    object_ref: tuple[ObjectType, str] | None,
    tags: tuple[str, ...],
    outcome: Outcome | None,
    since: datetime | None,
    until: datetime | None,
    trace_id: str | None,
) -> None:
    """Export events, oldest first, as JSON lines or CSV; same filters as 'events'.

    Streams: memory stays bounded however many events match. A progress bar shows on
    a terminal, never when output is piped. --json is short for --format jsonl.

    \b
    Examples:
      decision-trace export --format csv -o decisions.csv
      decision-trace export --since 7d --actor-type ai_agent > ai.jsonl
      decision-trace export --object order:ord-123 --format jsonl
    """
    fmt = (fmt or "jsonl").lower()
    if as_json and fmt != "jsonl":
        raise click.UsageError("--json means --format jsonl; it cannot be used with --format csv")
    filters = _filters(
        event_types, actor_types, actor_ids, object_ref, tags, outcome, since, until, trace_id
    )
    to_file = output != "-"
    show_progress = _is_tty(sys.stderr) and (to_file or not _is_tty(sys.stdout))
    written = 0
    with (
        _open(db) as ledger,
        _output(output, _ledger_file(ledger)) as stream,
    ):
        total = ledger.count(filters) if show_progress else 0
        progress = (
            click.progressbar(
                length=total, label="Exporting", file=sys.stderr, update_min_steps=200
            )
            if show_progress
            else nullcontext()
        )
        if fmt == "csv":
            writer = csv.writer(stream)
            writer.writerow(_CSV_COLUMNS)
        with progress as bar:
            for event in ledger.iter_events(filters):
                if fmt == "csv":
                    writer.writerow(_csv_row(event))
                else:
                    stream.write(
                        json.dumps(event_to_json(event), ensure_ascii=True, separators=(",", ":"))
                        + "\n"
                    )
                written += 1
                if bar is not None:
                    bar.update(1)
        stream.flush()
    if to_file:
        _err(f"Exported {written:,} event{'s' if written != 1 else ''} to {output}.")


@main.command(short_help="Delete events older than a cutoff (retention).")
@click.option(
    "--older-than",
    "older_than",
    type=TIME,
    required=True,
    help="Delete events that started before this: an age (30d, 6mo, 1y, '90 days') or "
    "an ISO 8601 date. Under one day ago needs --force.",
)
@click.option("--dry-run", is_flag=True, help="Only report what would be deleted.")
@click.option(
    "--force",
    is_flag=True,
    help="Allow a cutoff less than one day ago (deleting today's events), and deleting "
    "events a shipping destination has not acknowledged yet.",
)
@click.option(
    "--vacuum",
    is_flag=True,
    help="Afterwards compact the ledger (rewrite the file), so the deleted data is gone "
    "from disk too (not only unlinked) and the space is returned.",
)
@click.option(
    "--keep-skeleton",
    is_flag=True,
    help="Remove only the events' payloads (descriptions, reasoning, states, ids, tags; "
    "as erase does), keeping their skeletons and the chain's proof of them.",
)
@_common
def prune(
    db: str | None,
    as_json: bool,
    older_than: datetime,
    dry_run: bool,
    force: bool,
    vacuum: bool,
    keep_skeleton: bool,
) -> None:
    """Delete old events with their objects, tags and search entries (retention).

    Every prune is recorded in the ledger's chain, so verify tells pruned events from
    deleted ones. With --keep-skeleton, only the payloads go: each event keeps its id,
    time, type, actor type, outcome and object types, and verify still proves them.

    A ledger that ships (decision-trace ship) is the outbox of the team's ledger: prune
    refuses to delete events a destination has not acknowledged yet, and says how many,
    unless --force is given.

    After deleting, the ledger's own integrity checks run (for a file: PRAGMA
    integrity_check and FTS5's own check); a failed check is an error. A cutoff less
    than one day ago (15m is 15 minutes) is refused unless --force is given; --dry-run
    never needs it.

    \b
    Examples:
      decision-trace prune --older-than 90d --dry-run
      decision-trace prune --older-than 6mo --vacuum
      decision-trace prune --older-than 1y
      decision-trace prune --older-than 2024-01-01 --json
    """
    now = datetime.now(timezone.utc)
    if older_than > now:
        raise click.UsageError(f"--older-than is in the future ({_when(older_than)})")
    if now - older_than < timedelta(days=1) and not (force or dry_run):
        raise click.UsageError(
            f"--older-than {_when(older_than)} is less than one day ago "
            f"({_duration(now - older_than)} ago): it would delete today's events too; "
            "run with --dry-run to see how many, and add --force if you mean it"
        )
    with _open(db, write=True) as ledger:
        is_file = _ledger_file(ledger) is not None
        try:
            report = ledger.prune(
                ns_from_datetime(older_than, "--older-than"),
                dry_run=dry_run,
                force=force,
                keep_skeleton=keep_skeleton,
            )
        except UnshippedEventsError as exc:
            listed = ", ".join(
                f"{_count(n, 'event')} not yet acknowledged by {_safe(dest)}"
                for dest, n in exc.unshipped.items()
            )
            raise _Fail(
                f"refusing to prune: of the events older than {_when(older_than)}, {listed}; "
                "ship them first (decision-trace ship), or add --force to delete them anyway"
            ) from None
        problems: list[str] | None = None
        checkpointed: bool | None = None
        if not dry_run:
            if vacuum:
                try:
                    checkpointed = ledger.compact()
                except DecisionTraceError as exc:
                    raise _Fail(
                        f"deleted {_count(report.events, 'event')}, but the vacuum failed "
                        f"(run prune --vacuum again later): {_one_line(str(exc))}"
                    ) from exc
            problems = ledger.check()
    if problems:
        raise _Fail("integrity check failed after pruning: " + "; ".join(problems[:5]))
    if as_json:
        _print_json(
            {
                "dry_run": dry_run,
                "older_than": older_than.isoformat(),
                "events": report.events,
                "objects": report.objects,
                "tags": report.tags,
                "unshipped": report.unshipped,
                "kept_skeleton": report.kept_skeleton,
                "vacuumed": checkpointed is not None,
                "checkpointed": checkpointed,
                "integrity_check": None if problems is None else "ok",
            }
        )
        return
    plural = "s" if report.events != 1 else ""
    if keep_skeleton:
        verb = "Would remove" if dry_run else "Removed"
        _out(
            _wrap(
                f"{verb} the payloads of {report.events:,} event{plural} older than "
                f"{_when(older_than)}; their skeletons stay, and the chain proves them.",
                "",
            )
        )
    else:
        verb = "Would delete" if dry_run else "Deleted"
        _out(
            _wrap(
                f"{verb} {report.events:,} event{plural} older than {_when(older_than)} "
                f"({_count(report.objects, 'object link')}, {_count(report.tags, 'tag')}, "
                "and their search entries).",
                "",
            )
        )
    if report.unshipped:
        _err(
            _wrap(
                f"{'Would delete' if dry_run else 'Deleted'} "
                f"{_count(report.unshipped, 'event')} that a shipping destination had not "
                "acknowledged" + (" (prune refuses this without --force)." if dry_run else "."),
                "",
            )
        )
    if problems is not None:
        _out("Integrity check: ok.")
    if checkpointed:
        _out(
            "File vacuumed: the deleted data is gone from disk."
            if is_file
            else "Ledger compacted: the deleted data's space is given back."
        )
    elif checkpointed is False:
        _err(
            _wrap(
                "File vacuumed, but another process is reading it: the old pages leave the "
                "file at its next checkpoint (or run prune --vacuum again)."
                if is_file
                else "The ledger could not finish compacting now: it finishes later (or "
                "run prune --vacuum again).",
                "",
            )
        )


# --- proving the ledger: keygen, checkpoint, verify, erase (docs/proving.md) -------------


@main.command(short_help="Make an Ed25519 key pair for signing checkpoints.")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The private key file to create (mode 0600); the public key goes to OUT.pub.",
)
@click.option("--force", is_flag=True, help="Replace existing key files.")
@_json_option
def keygen(out: Path, force: bool, as_json: bool) -> None:
    """Make a key pair for signing checkpoints: the private key (PKCS #8 PEM, mode 0600)
    for whoever writes checkpoints, the public key (OUT.pub) for whoever verifies them.
    Keep the private key away from the ledger's own machine if you can: whoever holds
    it can sign a checkpoint of a rewritten ledger.

    \b
    Examples:
      decision-trace keygen --out ~/.config/decision-trace/checkpoint.key
    """
    from .checkpoint import generate_key_pair, key_id, load_public_key

    private, public = generate_key_pair(out.expanduser(), overwrite=force)
    ident = key_id(load_public_key(public))
    if as_json:
        _print_json({"private_key": str(private), "public_key": str(public), "key_id": ident})
        return
    _out(f"Private key: {private} (mode 0600; keep it secret)")
    _out(f"Public key:  {public}")
    _out(f"Key id:      {ident}")


@main.command(short_help="Write a signed checkpoint of the ledger's chain.")
@click.option(
    "--key",
    "key",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The private key (from decision-trace keygen).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(),
    default=None,
    help="Write the checkpoint to this file, or into this folder (named by position and "
    "time; a path ending in / is a folder, made if missing). Default: standard output.",
)
@_common
def checkpoint(db: str | None, as_json: bool, key: Path, out: str | None) -> None:
    """Sign where the ledger's chain stands (ledger id, entries, last position and hash,
    time) with an Ed25519 key, as a short text to keep outside the ledger: in another
    system, a git repository, a ticket. verify --checkpoint then proves the ledger still
    reaches it: nothing before it was changed, deleted or rebuilt since.

    \b
    Examples:
      decision-trace checkpoint --key checkpoint.key --out checkpoints/
      decision-trace checkpoint --key checkpoint.key > audit/ledger-checkpoint.txt
      decision-trace checkpoint --key checkpoint.key --json
    """
    from .checkpoint import format_checkpoint, load_private_key, write_checkpoint_file
    from .integrity import Checkpoint

    private = load_private_key(key.expanduser())
    with _open(db) as ledger:
        state = ledger.chain_state()
    text = format_checkpoint(
        Checkpoint(state.ledger_id, state.position, state.entries, state.hash, time.time_ns()),
        private,
    )
    written = None
    if out is not None:
        target = Path(out).expanduser()
        if out.endswith(("/", os.sep)):  # a folder, made if missing
            target.mkdir(parents=True, exist_ok=True)
        written = write_checkpoint_file(target, text)
    if as_json:
        _print_json(
            {
                "ledger_id": state.ledger_id,
                "position": state.position,
                "entries": state.entries,
                "hash": state.hash.hex(),
                "file": None if written is None else str(written),
                "text": text,
            }
        )
    elif written is None:
        click.echo(text, nl=False)
    else:
        _err(f"Checkpoint of {state.entries:,} entries (to position {state.position}): {written}")


@main.command(short_help="Prove the ledger unaltered: recompute its chain.")
@click.option(
    "--checkpoint",
    "checkpoint_files",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    help="A signed checkpoint the ledger must still reach (repeatable); needs --pubkey.",
)
@click.option(
    "--pubkey",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The public key the checkpoints were signed with.",
)
@click.option(
    "--max-problems",
    type=click.IntRange(1, 100_000),
    default=20,
    show_default=True,
    help="Problems to list (all are counted).",
)
@_common
def verify(
    db: str | None,
    as_json: bool,
    checkpoint_files: tuple[Path, ...],
    pubkey: Path | None,
    max_problems: int,
) -> None:
    """Recompute the ledger's tamper-evident chain over every event and act, and report:
    OK with the counts, or each event that was changed, inserted, deleted or reordered
    (by id and position), and each checkpoint the ledger no longer reaches (truncated,
    or rebuilt by someone with write access). Erased and pruned events verify as such.

    Exit status: 0 everything verified; 1 a problem was found (or a checkpoint is not
    authentic); 2 usage.

    \b
    Examples:
      decision-trace verify
      decision-trace verify --checkpoint cps/checkpoint-1200-*.txt --pubkey k.pub
      decision-trace verify --json
    """
    from .checkpoint import load_public_key, read_checkpoint_file

    if checkpoint_files and pubkey is None:
        raise click.UsageError("--checkpoint needs --pubkey (the key that signed it)")
    checkpoints = []
    if checkpoint_files:
        assert pubkey is not None
        public = load_public_key(pubkey)
        checkpoints = [read_checkpoint_file(path, public) for path in checkpoint_files]
    with _open(db) as ledger:
        state = ledger.chain_state()
        for path, cp in zip(checkpoint_files, checkpoints, strict=True):
            if cp.ledger_id != state.ledger_id:
                raise _Fail(
                    f"{path} is a checkpoint of ledger {cp.ledger_id}, not of this one "
                    f"({state.ledger_id})"
                )
        bar = (
            click.progressbar(length=state.entries, label="Verifying", file=sys.stderr)
            if not as_json and _is_tty(sys.stderr)
            else None
        )
        with bar if bar is not None else nullcontext():
            report = ledger.verify(
                checkpoints=checkpoints,
                max_problems=max_problems,
                progress=None if bar is None else lambda n: bar.update(n - bar.pos),
            )
    if as_json:
        _print_json(
            {
                "ok": report.ok,
                "ledger_id": state.ledger_id,
                "entries": report.entries,
                "events": report.events,
                "erased": report.erased,
                "payload_pruned": report.payload_pruned,
                "pruned": report.pruned,
                "acts": [
                    {"position": a.position, **a.body, "at": _iso_ns(a.at_ns)} for a in report.acts
                ],
                "head": {"position": report.head_position, "hash": report.head_hash.hex()},
                "checkpoints": report.checkpoints_checked,
                "problem_count": report.problem_count,
                "problems": [
                    {
                        "kind": p.kind,
                        "position": p.position,
                        "event_id": p.event_id,
                        "detail": p.detail,
                    }
                    for p in report.problems
                ],
            }
        )
    else:
        counts = (
            f"{report.entries:,} chain entries: {_count(report.events, 'event')} intact, "
            f"{report.erased:,} erased, {report.payload_pruned:,} pruned to their skeleton, "
            f"{report.pruned:,} pruned, {_count(len(report.acts), 'act')} recorded"
        )
        if report.ok:
            _out(_wrap(f"OK: {counts}.", ""))
            if checkpoints:
                _out(f"Checkpoints reached: {len(checkpoints)} of {len(checkpoints)}.")
            _out(f"Head: position {report.head_position}, hash {report.head_hash.hex()}")
        else:
            _out(_wrap(f"FAILED: {_count(report.problem_count, 'problem')} in {counts}.", ""))
            for p in report.problems:
                _out(_wrap(_safe(str(p)), "  "))
            if report.problem_count > len(report.problems):
                _out(f"  ... and {report.problem_count - len(report.problems):,} more")
    if not report.ok:
        sys.exit(1)


def _iso_ns(ns: int) -> str:
    return datetime_from_ns(ns).isoformat().replace("+00:00", "Z")


@main.command(short_help="Erase a person's data, keeping the audit skeleton.")
@click.option(
    "--subject",
    required=True,
    metavar="TYPE:ID",
    help="user:ID (a user actor) or an object type and id holding personal data (customer:ID).",
)
@click.option("--reason", required=True, help="Why (kept in the ledger's chain).")
@click.option(
    "--requested-by",
    "requested_by",
    default=None,
    help="Who asked (kept in the chain). Default: the operating-system user.",
)
@click.option("--dry-run", is_flag=True, help="Only list the events that would be erased.")
@click.option(
    "--no-compact",
    is_flag=True,
    help="Skip compacting the ledger afterwards (the erased bytes then stay on disk until "
    "the next prune --vacuum).",
)
@_common
def erase(
    db: str | None,
    as_json: bool,
    subject: str,
    reason: str,
    requested_by: str | None,
    dry_run: bool,
    no_compact: bool,
) -> None:
    """Remove every plaintext occurrence of a subject's personal data from the events
    that involve it (the events a user acted in, or that touched a customer): names,
    e-mails, descriptions, reasoning and context, alternatives, object states and ids,
    metadata, tags. Each event keeps its skeleton (id, time, type, actor type, outcome,
    object types) with a keyed pseudonym in place of the ids, the erasure is recorded
    in the chain (who asked, when, why, how many events), and verify still proves the
    ledger. The ledger is then compacted, so the bytes leave the file, its log and its
    search index.

    A ledger that ships keeps no other copy in step: erase the subject at every
    destination too (docs/proving.md).

    \b
    Examples:
      decision-trace erase --subject customer:c-42 --reason "GDPR 118" --dry-run
      decision-trace erase --subject customer:c-42 --reason "GDPR 118"
      decision-trace erase --subject user:u-7 --reason "closed" --requested-by dpo
    """
    import getpass

    from .integrity import parse_subject

    subject_type, subject_id = parse_subject(subject)
    who = requested_by or getpass.getuser()
    with _open(db, write=True) as ledger:
        report = ledger.erase(
            subject_type, subject_id, reason=reason, requested_by=who, dry_run=dry_run
        )
        compacted: bool | None = None
        if report.events and not dry_run and not no_compact:
            compacted = ledger.compact()
    if as_json:
        _print_json(
            {
                "dry_run": dry_run,
                "subject_type": report.subject_type,
                "pseudonym": report.pseudonym,
                "events": report.events,
                "event_ids": list(report.event_ids),
                "position": report.position,
                "compacted": compacted,
            }
        )
        return
    if dry_run:
        _out(f"Would erase {_count(report.events, 'event')} involving {_safe(subject)}:")
        for event_id in report.event_ids:
            _out(f"  {event_id}")
        return
    if not report.events:
        _out(f"Nothing to erase: no event involves {_safe(subject)} (or it was erased before).")
        return
    _out(
        _wrap(
            f"Erased {_count(report.events, 'event')} involving {_safe(subject)}; they keep "
            f"their skeletons, with {report.pseudonym} in place of the id. The erasure is "
            f"recorded in the chain at position {report.position}.",
            "",
        )
    )
    if compacted:
        _out("Ledger compacted: the erased bytes are gone from disk.")
    elif compacted is False:
        _err(
            _wrap(
                "Compacted, but another process is reading the ledger: the old pages leave "
                "the file at its next checkpoint (or run prune --vacuum later).",
                "",
            )
        )


# --- copy -------------------------------------------------------------------------------

_REJECTED_SHOWN = 10
"""How many rejected event ids ``copy`` lists (the count is always complete)."""


class _Interrupted(_Fail):
    """Ctrl-C, after reporting what was done: exit status 130, as a shell reports SIGINT."""

    exit_code = 130


def _same_file(first: str, second: str) -> bool:
    """Whether two ledger targets are file paths naming one file (through ``~``,
    relative paths, symbolic or hard links)."""
    if is_url(first) or is_url(second):
        return False
    a, b = Path(first).expanduser(), Path(second).expanduser()
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        pass
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop
        return a.absolute() == b.absolute()


@contextmanager
def _open_destination(target: str) -> Iterator[Ledger]:
    """The ledger ``copy`` writes, created if missing, closed afterwards."""
    ledger = open_ledger(
        target if is_url(target) else str(Path(target).expanduser()), durability="batch"
    )
    try:
        yield ledger
    finally:
        ledger.close()


class _CopyReport:
    """What ``copy`` did so far: events read and written (new, already there, rejected)."""

    def __init__(self, source: str, destination: str) -> None:
        self.source = source
        self.destination = destination
        self.read = 0
        self.new = 0
        self.rejected = 0
        self.rejected_ids: list[str] = []
        self.first_rejection = ""
        self.complete = False

    @property
    def already_there(self) -> int:
        return self.read - self.new - self.rejected

    def write(self, ledger: Ledger, batch: Sequence[EventRecord]) -> None:
        """Write one batch to ``ledger`` and count it; rejected events are counted, the
        first few ids kept, and the copy goes on."""
        try:
            added = ledger.write(batch)
            rejected: Sequence[str] = ()
        except RejectedRecordsError as exc:
            added, rejected = exc.written, exc.rejected
            if not self.first_rejection:
                self.first_rejection = _one_line(str(exc))
        self.read += len(batch)
        self.new += added
        self.rejected += len(rejected)
        room = _REJECTED_SHOWN - len(self.rejected_ids)
        self.rejected_ids.extend(rejected[: max(0, room)])

    def as_json(self) -> dict[str, Any]:
        return {
            "from": self.source,
            "to": self.destination,
            "complete": self.complete,
            "read": self.read,
            "new": self.new,
            "already_there": self.already_there,
            "rejected": self.rejected,
            "rejected_ids": self.rejected_ids,
        }

    def line(self) -> str:
        verb = "Copied" if self.complete else "Stopped copying"
        return (
            f"{verb} {self.source} to {self.destination}: read {_count(self.read, 'event')}, "
            f"{self.new:,} new, {self.already_there:,} already there, "
            f"{self.rejected:,} rejected."
        )


@main.command(short_help="Copy every event of one ledger into another.")
@click.option(
    "--from",
    "source",
    type=LEDGER,
    default=None,
    help="The ledger to copy (only read). Default: the one other commands read "
    "(--db before the command, $DECISION_TRACE_DB, else the default ledger).",
)
@click.option(
    "--to",
    "destination",
    type=LEDGER,
    required=True,
    help="The ledger to copy into; created if missing. Events it holds already are skipped.",
)
@click.option(
    "--batch",
    "batch_size",
    default=500,
    show_default=True,
    type=click.IntRange(min=1, max=100_000),
    metavar="N",
    help="Events read and written per transaction.",
)
@_json_option
def copy(source: str | None, destination: str, batch_size: int, as_json: bool) -> None:
    """Copy every event of one ledger into another, exactly as stored: ids, times and
    every field, in the order the source stored them.

    Streams N events a batch, so memory stays bounded however large the ledger. An
    event the destination holds already is skipped: running the same copy again stores
    nothing new, and a copy stopped with Ctrl-C (once the batch in flight is written;
    exit status 130, after reporting what it copied) resumes when run again. An event
    the destination refuses is counted and its id listed; the copy goes on and exits
    with status 1. A progress bar shows when stderr is a terminal; the report is one
    line (one object with --json).

    \b
    Examples:
      decision-trace copy --from traces.db --to archive.db
      decision-trace copy --from ~/old.db --to traces.db --batch 2000
      decision-trace --db traces.db copy --to backup.db --json
    """
    source_target = _target(source)
    if _same_file(source_target, destination):
        raise _same_ledger(source_target)
    failure: DecisionTraceError | None = None
    with (
        _open(source, option="--from PATH|URL") as src,
        _open_destination(destination) as dst,
    ):
        if src.location == dst.location:
            raise _same_ledger(src.location)
        report = _CopyReport(src.location, dst.location)
        try:
            _copy_records(src, dst, batch_size, report)
            report.complete = True
        except KeyboardInterrupt:
            pass  # reported below; what is written stays written
        except DecisionTraceError as exc:
            failure = exc
    if as_json:
        _print_json(report.as_json())
    else:
        _out(_safe(report.line()))  # one line, never wrapped: scripts grep it
        if report.rejected_ids:
            more = report.rejected - len(report.rejected_ids)
            listed = ", ".join(report.rejected_ids) + (f" and {more:,} more" if more else "")
            _out(f"Rejected: {_safe(listed)}.")
    again = "run the same copy again to copy the rest (events copied already are skipped)"
    if failure is not None:
        raise _Fail(
            f"stopped after {_count(report.read, 'event')}: {_one_line(str(failure))}; {again}"
        )
    if not report.complete:
        raise _Interrupted(f"interrupted after {_count(report.read, 'event')}; {again}")
    if report.rejected:
        raise _Fail(
            f"{_count(report.rejected, 'event')} not copied: the destination refused "
            f"them (first refusal: {report.first_rejection})"
        )


def _same_ledger(location: str) -> _UsageFail:
    return _UsageFail(
        f"--from and --to are the same ledger ({location}): copying a ledger onto itself "
        "would change nothing"
    )


class _StopAfterBatch:
    """Ctrl-C during ``copy`` takes effect once the batch being read or written is done,
    so no statement is cut in the middle: a database driver interrupted inside a write
    leaves its connection busy and complains on stderr (psycopg does). A second Ctrl-C
    interrupts at once. Outside the main thread (no signals there) it does nothing."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _StopAfterBatch:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._installed:  # None: a handler not set from Python; Python's own then
            previous = self._previous
            signal.signal(
                signal.SIGINT, signal.default_int_handler if previous is None else previous
            )

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if Ctrl-C came since the copy began."""
        if self.requested:
            raise KeyboardInterrupt


def _copy_records(src: Ledger, dst: Ledger, batch_size: int, report: _CopyReport) -> None:
    """Stream every record of ``src`` into ``dst``, ``batch_size`` at a time, counting in
    ``report`` as each batch is written; a progress bar on stderr when it is a terminal.
    Ctrl-C stops the copy after the batch in flight is written (:class:`_StopAfterBatch`)."""
    show_progress = _is_tty(sys.stderr)
    progress = (
        click.progressbar(length=src.count(EventFilters()), label="Copying", file=sys.stderr)
        if show_progress
        else nullcontext()
    )
    with (
        _StopAfterBatch() as interrupt,
        progress as bar,
        closing(src.iter_records(batch_size=batch_size)) as records,
    ):
        batch: list[EventRecord] = []
        for _, record in records:
            batch.append(record)
            if len(batch) < batch_size:
                continue
            report.write(dst, batch)
            if bar is not None:
                bar.update(len(batch))
            batch = []
            interrupt.check()
        if batch:
            report.write(dst, batch)
            if bar is not None:
                bar.update(len(batch))


# --- ship -------------------------------------------------------------------------------


class _ShipLockHeld(_Fail):
    """Another shipper holds the lock for this ledger and destination: exit status 3."""

    exit_code = 3


class _ShipDisplay:
    """What ``ship`` shows while it works: a progress bar on a terminal (a status line
    with --follow); otherwise one line per change of the destination's state."""

    def __init__(self, destination: str, backlog: int, *, follow: bool, quiet: bool) -> None:
        self.destination = destination
        self.tty = _is_tty(sys.stderr) and not quiet
        self.follow = follow
        self.shipped = 0
        self._bar: Any = None
        self._backlog = backlog

    def __enter__(self) -> _ShipDisplay:
        if self.tty and not self.follow and self._backlog:
            self._bar = click.progressbar(
                length=self._backlog, label="Shipping", file=sys.stderr
            ).__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
        elif self.tty and self.follow:
            click.echo(err=True)

    def __call__(self, state: str, message: str) -> None:
        when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        if state == "progress":
            self.shipped += int(message or 0)
            if self._bar is not None:
                self._bar.update(int(message or 0))
            elif self.tty and self.follow:
                click.echo(
                    f"\r{when} shipping to {self.destination}: {self.shipped:,} shipped\033[K",
                    file=sys.stderr,
                    nl=False,
                )
            return
        if self._bar is not None or (self.tty and self.follow):
            click.echo(err=True)
        text = (
            f"{when} {self.destination} is not answering ({message}); retrying with backoff"
            if state == "down"
            else f"{when} {self.destination} answers again ({message}); shipping"
        )
        _err(_safe(text))


@main.command(short_help="Ship the ledger to the team's ledger (OTLP, at least once).")
@_db_option
@click.option(
    "--to",
    "destination",
    envvar=SHIP_TO_ENV_VAR,
    required=True,
    metavar="URL",
    help="The OTLP/HTTP endpoint to ship to: a decision-trace serve, an OpenTelemetry "
    "Collector or any OTLP backend (http://host:4318; /v1/traces is added). Default: "
    f"${SHIP_TO_ENV_VAR}.",
)
@click.option(
    "--token",
    envvar=SHIP_TOKEN_ENV_VAR,
    default=None,
    metavar="TOKEN",
    help=f"Bearer token the destination asks for. Default: ${SHIP_TOKEN_ENV_VAR} (prefer "
    "it: a command line is visible to other users of the machine).",
)
@click.option(
    "--follow",
    is_flag=True,
    help="Keep running and ship new events within about a second of their commit, until "
    "SIGTERM or Ctrl-C.",
)
@click.option(
    "--batch",
    "batch_size",
    default=512,
    show_default=True,
    type=click.IntRange(min=1, max=10_000),
    metavar="N",
    help="Events per request.",
)
@click.option(
    "--max-wait",
    default=300.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Without --follow: give up (exit 1) after this long without an acknowledgement "
    "while the destination is down or busy.",
)
@click.option(
    "--timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="How long one request may take before it is retried.",
)
@click.option(
    "--forget",
    is_flag=True,
    help="Ship nothing: stop keeping events for this destination (it was retired), so "
    "prune no longer waits for it.",
)
@_json_option
def ship(
    db: str | None,
    destination: str,
    token: str | None,
    follow: bool,
    batch_size: int,
    max_wait: float,
    timeout: float,
    forget: bool,
    as_json: bool,
) -> None:
    """Ship every event of the local ledger that the destination has not acknowledged,
    as OTLP/HTTP protobuf, in the order the ledger committed them.

    The destination's high-water mark is kept in the ledger and moves only after a 2xx
    answer, so a stopped or killed ship re-sends at most one batch, which an idempotent
    destination (decision-trace serve) stores once. Spans the destination refuses
    (partial_success) are recorded as rejected with its reason, shown by stats, and
    never retried. 429, 5xx, timeouts and connection errors are retried with
    exponential backoff and jitter, honouring Retry-After.

    Without --follow the backlog is shipped and the command exits: 0 when everything
    was shipped, 1 when an event was rejected or could not be sent (the destination
    still down after --max-wait). Only one ship may run for a ledger and destination:
    another one exits with status 3 (a lock file beside the ledger, released by the
    kernel when its holder dies).

    \b
    Examples:
      decision-trace ship --db traces.db --to http://ledger.internal:4318
      decision-trace ship --to https://ledger:4318 --follow
      decision-trace ship --to http://localhost:4318 --json
    """
    from .shipping import ShipLockedError, Shipper, ShippingError, destination_url

    try:
        url = destination_url(destination)
    except InvalidInputError as exc:
        raise _UsageFail(f"--to: {exc.problem}") from None
    with _open(db, write=True) as ledger:
        if not isinstance(ledger, Outbox):
            raise _UsageFail(
                f"cannot ship from {ledger.location}: only a local SQLite ledger ships "
                "(a PostgreSQL ledger or a ledger service is what events are shipped to)"
            )
        if forget:
            found = ledger.forget_destination(url)
            if as_json:
                _print_json({"destination": url, "forgotten": found})
            elif found:
                _out(f"Forgot {url}: prune no longer keeps events for it.")
            else:
                _out(f"{url} was not a shipping destination of this ledger.")
            return
        backlog = next((s.backlog for s in ledger.outbox_status() if s.destination == url), None)
        if backlog is None:
            backlog = ledger.count(EventFilters())
        display = _ShipDisplay(url, backlog, follow=follow, quiet=as_json)
        try:
            shipper = Shipper(
                ledger,
                url,
                token=token,
                batch_size=batch_size,
                timeout=timeout,
                on_state=display,
            )
        except ShipLockedError as exc:
            raise _ShipLockHeld(_one_line(str(exc))) from None
        except ShippingError as exc:
            raise _Fail(_one_line(str(exc))) from None
        interrupted = False

        def on_signal(signum: int, frame: object) -> None:
            nonlocal interrupted
            if interrupted:  # a second Ctrl-C or SIGTERM: stop at once
                shipper.stop()
                return
            interrupted = True
            if follow:  # a service being stopped: ship what is committed, briefly
                shipper.finish_by(time.monotonic() + min(5.0, timeout))
            else:
                shipper.stop()

        failure: DecisionTraceError | None = None
        with _signals(on_signal), _quiet_logger("decision_trace.shipping"), display, shipper:
            try:
                report = shipper.follow() if follow else shipper.ship(max_wait=max_wait)
            except DecisionTraceError as exc:
                failure = exc
    if failure is not None:
        raise _Fail(_one_line(str(failure)))
    if as_json:
        data = report.to_json()
        data["interrupted"] = interrupted
        _print_json(data)
    else:
        rejected = len(report.rejected)
        _out(
            _safe(
                f"Shipped {_count(report.shipped, 'event')} to {url} "
                f"({rejected:,} rejected); {report.remaining:,} left to ship."
            )
        )
        for item in report.rejected[:_REJECTED_SHOWN]:
            _out(_safe(f"Rejected {item.event_id} (position {item.position}): {item.message}"))
        if rejected > _REJECTED_SHOWN:
            _out(f"... and {rejected - _REJECTED_SHOWN:,} more (decision-trace stats).")
    if report.rejected:
        raise _Fail(f"{_count(len(report.rejected), 'event')} rejected by {url}")
    if interrupted and not follow:
        raise _Interrupted(f"interrupted; {report.remaining:,} left to ship (run ship again)")
    if report.remaining and not follow:
        raise _Fail(
            f"{_count(report.remaining, 'event')} not shipped: "
            f"{report.last_error or 'the destination did not acknowledge them in time'}"
        )


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Keep ``name``'s records off stderr while the block runs (the command prints its
    own lines about the same events), unless the application configured logging."""
    logger = logging.getLogger(name)
    null = logging.NullHandler()
    logger.addHandler(null)
    try:
        yield
    finally:
        logger.removeHandler(null)


@contextmanager
def _signals(handler: Callable[[int, object], None]) -> Iterator[None]:
    """SIGINT and SIGTERM call ``handler`` while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, signal.default_int_handler if old is None else old)


# --- the ledger service -------------------------------------------------------------------

_SERVER_EXTRA = "pip install 'decision-trace-otel[server]'"
_SERVER_MODULES = ("starlette", "uvicorn", "h11", "anyio", "grpc", "google", "opentelemetry")


@main.command(short_help="Run the ledger service: OTLP ingest and the read API.")
@_db_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; 0.0.0.0 (or ::) for every interface.",
)
@click.option(
    "--port",
    default=4318,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="OTLP/HTTP and read API port (0: any free port, printed at start).",
)
@click.option(
    "--grpc-port",
    default=4317,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="OTLP/gRPC port (0: any free port).",
)
@click.option("--no-grpc", is_flag=True, help="Do not listen for OTLP/gRPC.")
@click.option(
    "--token",
    envvar="DECISION_TRACE_TOKEN",
    default=None,
    metavar="TOKEN",
    help="Require 'Authorization: Bearer TOKEN' on every request. Default: "
    "$DECISION_TRACE_TOKEN (prefer it: a command line is visible to other users).",
)
@click.option(
    "--max-body-mb",
    default=16.0,
    show_default=True,
    type=click.FloatRange(min=0.001, max=1024),
    metavar="MB",
    help="Largest OTLP request, compressed or not, in MiB (413 past it).",
)
@click.option(
    "--request-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.1, max=3600),
    metavar="SECONDS",
    help="Time a client has to send a request's headers, and its body (408 past it).",
)
@click.option(
    "--ssl-certfile",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="TLS certificate (PEM) for HTTP and gRPC; with --ssl-keyfile.",
)
@click.option(
    "--ssl-keyfile",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="TLS private key (PEM, unencrypted).",
)
def serve(
    db: str | None,
    host: str,
    port: int,
    grpc_port: int,
    no_grpc: bool,
    token: str | None,
    max_body_mb: float,
    request_timeout: float,
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
) -> None:
    """Run the team's ledger service: OTLP ingest (HTTP on --port, gRPC on
    --grpc-port) into the ledger, and the read API, until SIGTERM or Ctrl-C.

    Any OpenTelemetry SDK or Collector can export to it: 4318 and 4317 are the
    standard OTLP ports. Spans are stored as the local exporter stores them; the
    same span sent twice is stored once. Listens on 127.0.0.1 unless told
    otherwise (--host 0.0.0.0). Needs the server extra:
    pip install 'decision-trace-otel[server]'. See docs/server.md.

    \b
    Examples:
      decision-trace serve --db traces.db
      decision-trace serve --db postgresql://db/ledger --host 0.0.0.0
      decision-trace serve --db traces.db --port 0 --no-grpc
    """
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise _UsageFail("--ssl-certfile and --ssl-keyfile go together")
    try:
        from .server import BearerToken
        from .server.run import ServeOptions
        from .server.run import serve as run_server
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _SERVER_MODULES:
            raise
        raise _Fail(
            f"decision-trace serve needs the server extra: {_SERVER_EXTRA} (missing: {exc.name})"
        ) from None
    try:
        BearerToken(token)
    except ValueError as exc:
        raise _UsageFail(f"--token (or $DECISION_TRACE_TOKEN): {exc}") from None
    target = _target(db)
    if not is_url(target):
        target = str(Path(target).expanduser())
    options = ServeOptions(
        db=target,
        host=host,
        port=port,
        grpc_port=None if no_grpc else grpc_port,
        token=token or None,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        request_timeout=request_timeout,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )
    run_server(options)


@main.command(short_help="Browse a ledger in the web view (read-only, local).")
@_db_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (keep the default: the view has no login unless "
    "$DECISION_TRACE_TOKEN is set).",
)
@click.option(
    "--port",
    default=0,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port (0: any free port).",
)
@click.option("--no-browser", is_flag=True, help="Only print the URL; do not open a browser.")
def ui(db: str | None, host: str, port: int, no_browser: bool) -> None:
    """Serve the web view of a ledger on this machine, read-only, print its URL and
    open it in the browser, until Ctrl-C.

    The timeline, an object's story ("why was order 123 refunded?"), each event,
    its chain, search and an overview; the read API under /api/v1 too. Nothing is
    written: the ledger is opened read-only and there is no ingest. Needs the
    server extra: pip install 'decision-trace-otel[server]'. See docs/web.md.

    \b
    Examples:
      decision-trace ui --db traces.db
      decision-trace ui --db postgresql://db/ledger --port 8080 --no-browser
    """
    try:
        from .server.ui import run_ui
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in (*_SERVER_MODULES, "jinja2", "markupsafe"):
            raise
        raise _Fail(
            f"decision-trace ui needs the server extra: {_SERVER_EXTRA} (missing: {exc.name})"
        ) from None
    target = _target(db)
    if not is_url(target):
        target = str(Path(target).expanduser())
        if not Path(target).exists():
            raise _Fail(f"no ledger at {target}")

    def announce(url: str) -> None:
        click.echo(url)

    try:
        run_ui(target, host=host, port=port, open_browser=not no_browser, announce=announce)
    except (DecisionTraceError, OSError, ValueError) as exc:
        raise _Fail(str(exc)) from None
