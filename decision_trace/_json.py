"""How values become JSON: the rules for what JSON cannot hold, and the one encoder.

Coercion rules (how values JSON cannot hold are stored; applied to ``context``,
``alternatives``, object ``state`` and ``metadata`` values, at any depth):

====================================  ==================================================
value                                 stored as
====================================  ==================================================
``str``, ``int``, ``bool``, ``None``  itself (integers of any size stay exact; over
                                      4300 digits is an error)
finite ``float``                      itself
NaN, +inf, -inf (float or Decimal)    the strings ``"NaN"``, ``"Infinity"``,
                                      ``"-Infinity"``
``Decimal``                           a JSON number if a float prints back to the same
                                      decimal (every two-decimal money amount below
                                      10**13 does), else its string (``"0.1234567890123456789"``)
``datetime``, ``date``, ``time``      ISO 8601 string (``datetime.isoformat()``)
``timedelta``                         its total seconds, a number
``UUID``, ``pathlib.Path``            ``str(value)``
``bytes``, ``bytearray``              standard base64 string
``Enum``                              its ``.value``, coerced again
dataclass instance                    a dict of its fields
``set``, ``frozenset``                a list, sorted by each item's JSON form
``tuple``, ``list``, other sequences  a list
mapping                               a dict; keys must be ``str``, ``int``, ``float``,
                                      ``bool``, ``None`` or an ``Enum`` (stored as JSON
                                      would: ``1`` -> ``"1"``, ``True`` -> ``"true"``);
                                      two keys of one mapping that become the same
                                      string (``1`` and ``"1"``) are not an error: the
                                      one given last is the value read back
====================================  ==================================================

(Finding such a pair would mean walking every mapping of every value on ``record()``'s
path, to catch what is almost always a bug in the caller's own data.)

Any other type, a structure that contains itself, and lists or dicts nested more than
500 deep raise :class:`~decision_trace.errors.InvalidInputError` naming the field
(``context['items'][2]``).
Strings are never truncated. Inside JSON values every string is kept exactly, lone
surrogates included; in plain text fields (description, reasoning, ids, names, tags) a
lone surrogate, which UTF-8 cannot hold, is replaced by U+FFFD.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import json.encoder
import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any
from uuid import UUID

from .errors import InvalidInputError
from .models import (
    clean_text,
)

# --- JSON coercion ------------------------------------------------------------------

_INT_DIGITS_LIMIT = 4300
_INT_LIMIT = 10**_INT_DIGITS_LIMIT  # the smallest integer of 4301 digits


def exception_message(error: BaseException) -> str:
    """``str(error)`` as plain text (lone surrogates replaced), never raising: an
    exception whose ``__str__`` fails gives ``"<exception str() failed>"``, as
    :mod:`traceback` shows it."""
    try:
        message = str(error)
    except Exception:
        return "<exception str() failed>"
    return clean_text(message)


def exception_text(error: BaseException) -> str:
    """The error text of a failed event: ``"<type name>: <message>"``, plain text."""
    return clean_text(type(error).__name__) + ": " + exception_message(error)


def _float_value(value: float) -> float | str:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _decimal_value(value: Decimal) -> float | str:
    if not value.is_finite():
        return "NaN" if value.is_nan() else ("Infinity" if value > 0 else "-Infinity")
    as_float = float(value)
    if math.isfinite(as_float) and Decimal(repr(as_float)) == value:
        return as_float
    return str(value)


def _key(key: Any, path: str) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, Enum):
        return _key(key.value, path)
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)
    raise InvalidInputError(path, f"keys must be strings, got {type(key).__name__} {key!r}")


def coerce_json(value: Any, path: str) -> Any:
    """Return ``value`` made of JSON types only, by the rules in this module's docstring.

    Args:
        value: Any Python value.
        path: The field's name, used in error messages (``"context"``).

    Raises:
        InvalidInputError: the value holds a type with no rule, or contains itself.
    """
    return _coerce(value, path, set())


def _coerce(value: Any, path: str, seen: set[int]) -> Any:
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, Enum):
        return _coerce(value.value, path, seen)
    if isinstance(value, int):
        if not -_INT_LIMIT < value < _INT_LIMIT:
            raise InvalidInputError(path, "integer too large to store (over 4300 digits)")
        return int(value)
    if isinstance(value, float):
        return _float_value(value)
    if isinstance(value, Decimal):
        return _decimal_value(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, UUID | PurePath):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    marker = id(value)
    if marker in seen:
        raise InvalidInputError(path, "contains a reference to itself (a cycle)")
    seen.add(marker)
    try:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {
                f.name: _coerce(getattr(value, f.name), f"{path}.{f.name}", seen)
                for f in dataclasses.fields(value)
            }
        if isinstance(value, Mapping):
            result: dict[str, Any] = {}
            for key, item in value.items():
                name = _key(key, path)
                result[name] = _coerce(item, f"{path}[{name!r}]", seen)
            return result
        if isinstance(value, set | frozenset):
            items = [_coerce(item, f"{path}[…]", seen) for item in value]
            return sorted(items, key=_canonical)
        if isinstance(value, Sequence):
            return [_coerce(item, f"{path}[{i}]", seen) for i, item in enumerate(value)]
    finally:
        seen.discard(marker)
    raise InvalidInputError(
        path,
        f"cannot store a value of type {type(value).__name__}; "
        "convert it to a string, number, list or dict first",
    )


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=True)


def dumps(value: Any, path: str) -> str:
    """Encode ``value`` as compact JSON, coercing as documented above.

    Raises:
        InvalidInputError: the value cannot be stored; the message names ``path``.
    """
    try:
        # Fast path: most values are plain JSON already.
        encoded = _encode(value)
    except (TypeError, ValueError, RecursionError):
        try:
            encoded = _encode(coerce_json(value, path))
        except RecursionError:
            raise InvalidInputError(path, "is nested too deeply to store") from None
    if len(encoded) <= MAX_DEPTH:  # too short to nest deeper (the usual case)
        return encoded
    return _check_depth(encoded, path)


MAX_DEPTH = 500
"""Deepest nesting of lists and dicts a value may have (SQLite's JSON functions, which
index the context for search, refuse documents nested about 1000 deep)."""

_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _check_depth(encoded: str, path: str) -> str:
    if len(encoded) <= MAX_DEPTH or encoded.count("[") + encoded.count("{") <= MAX_DEPTH:
        return encoded
    depth = 0
    for token in _JSON_TOKEN.findall(encoded):
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise InvalidInputError(path, f"is nested more than {MAX_DEPTH} levels deep")
        elif token in "]}":
            depth -= 1
    return encoded


def _not_json(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _make_encoder() -> Callable[[Any], str]:
    """Compact, ASCII-only, NaN-refusing JSON encoding, built once.

    ``json.dumps()`` with options builds a new encoder on every call; the C encoder is
    reused here instead. It runs without the circular-reference check (a cycle ends in
    RecursionError, which ``dumps`` turns into the coercion path that names the cycle).
    """
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # pragma: no cover - CPython always has it
        return json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode
    iterencode = c_make_encoder(
        None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )
    join = "".join

    def encode(value: Any) -> str:
        return join(iterencode(value, 0))

    return encode


_encode = _make_encoder()
