"""Turning ledger values into safe, bounded text for the pages.

Every value shown comes from the ledger, and most of it (reasoning, context, object
states, ids) from whoever recorded the event: hostile text is the normal case. The
templates escape everything (Jinja2 autoescape); this module makes it *readable* and
*bounded* before that: bidirectional overrides and control characters become visible
``[U+202E]`` marks, and long values are cut into a head shown at once, a rest behind
"show more", and a count of what no page shows (the read API has the full value).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from markupsafe import Markup, escape

from ...models import ActorType, DecisionTrace

__all__ = [
    "ACTOR_BADGES",
    "DiffRow",
    "Folded",
    "alternatives",
    "clean",
    "diff_rows",
    "duration_text",
    "event_href",
    "first_line",
    "fold",
    "highlight",
    "object_href",
    "time_tag",
    "value_text",
]

HEAD_CHARS = 400
"""Characters of a value shown at once; the rest goes behind "show more"."""

MAX_SHOWN_CHARS = 20_000
"""Characters of one value a page ever holds (head and rest together)."""

MAX_DIFF_KEYS = 200
"""Keys of an object state compared on a page."""

_INVISIBLE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
    "\ufff9-\ufffb\ud800-\udfff]"
)
"""Characters that would change how the page reads without being seen: C0/C1 controls
(not tab or newline), bidirectional marks, embeddings, overrides and isolates, zero-width
characters, line/paragraph separators, interlinear annotations, lone surrogates."""


def clean(text: str) -> str:
    """``text`` with every invisible or direction-changing character shown as
    ``[U+XXXX]``, so that no recorded text can reorder or hide what the page shows."""
    if text.isascii() and text.isprintable():
        return text
    return _INVISIBLE.sub(lambda m: f"[U+{ord(m.group()):04X}]", text)


@dataclass(frozen=True)
class Folded:
    """A value cut for display.

    Attributes:
        head: What is shown at once.
        rest: What "show more" reveals ("" when the head is everything).
        omitted: Characters no page shows (0 when the value fits).
    """

    head: str
    rest: str
    omitted: int


def fold(text: str, head: int = HEAD_CHARS) -> Folded:
    """``text`` (cleaned) cut into a head of ``head`` characters, a rest, and what is
    left out past :data:`MAX_SHOWN_CHARS`."""
    shown = clean(text[:MAX_SHOWN_CHARS])
    omitted = max(0, len(text) - MAX_SHOWN_CHARS)
    if len(shown) <= head:
        return Folded(shown, "", omitted)
    return Folded(shown[:head], shown[head:], omitted)


def value_text(value: Any) -> str:
    """A value as text: strings as they are, everything else as JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True, indent=1, default=str)
    except (TypeError, ValueError):  # keys of mixed types cannot be sorted
        return json.dumps(value, ensure_ascii=False, indent=1, default=str)


def first_line(text: str | None, limit: int = 160) -> str:
    """The first line of ``text``, cleaned, at most ``limit`` characters (… if cut)."""
    if not text:
        return ""
    line = text[: limit * 4].split("\n", 1)[0].strip()
    line = clean(line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


@dataclass(frozen=True)
class DiffRow:
    """One key of an object's state, before and after an event."""

    key: str
    before: str | None
    after: str | None
    changed: bool


_MISSING = object()


def diff_rows(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> tuple[list[DiffRow], int]:
    """The keys of ``before`` and ``after`` (first those of ``before``, then the new
    ones), each with its two values as text and whether it changed; at most
    :data:`MAX_DIFF_KEYS`, and how many keys were left out."""
    old = dict(before or {})
    new = dict(after or {})
    keys = list(dict.fromkeys([*old, *new]))
    rows = []
    for key in keys[:MAX_DIFF_KEYS]:
        a = old.get(key, _MISSING)
        b = new.get(key, _MISSING)
        rows.append(
            DiffRow(
                key=key,
                before=None if a is _MISSING else value_text(a),
                after=None if b is _MISSING else value_text(b),
                changed=a != b or (a is _MISSING) != (b is _MISSING),
            )
        )
    return rows, max(0, len(keys) - MAX_DIFF_KEYS)


def object_href(object_type: str, external_id: str) -> str:
    """The object story's URL (every character of the id percent-encoded)."""
    return f"/objects/{quote(object_type, safe='')}/{quote(external_id, safe='')}"


def event_href(event_id: str, suffix: str = "") -> str:
    """An event page's URL."""
    return f"/events/{quote(event_id, safe='')}{suffix}"


def time_tag(moment: datetime) -> Markup:
    """``<time>`` in UTC (``static/app.js`` rewrites the text to the viewer's zone and
    keeps UTC in the title)."""
    utc = moment.astimezone(timezone.utc)
    machine = utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    human = utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    return Markup('<time datetime="{0}" title="{1}">{1}</time>').format(machine, human)


def duration_text(duration: timedelta) -> str:
    """A duration for people: ``0 ms``, ``12.3 ms``, ``4.56 s``, ``3 min 2 s``."""
    seconds = duration.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    if seconds < 60:
        return f"{seconds:.3g} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest} s"


ACTOR_BADGES: dict[str, tuple[str, str]] = {
    ActorType.USER.value: ("user", "user"),
    ActorType.AI_AGENT.value: ("ai_agent", "AI agent"),
    ActorType.COMPUTE.value: ("compute", "compute"),
    ActorType.SYSTEM.value: ("system", "system"),
    ActorType.EXTERNAL.value: ("external", "external"),
}
"""Icon name (an inline SVG in ``_macros.html``, no font needed) and label per actor
type."""


MAX_ALTERNATIVES = 100
"""Alternatives (and rejection reasons) shown for one decision."""


def alternatives(
    decision: DecisionTrace,
) -> tuple[list[tuple[str, str | None]], list[tuple[str, str]]]:
    """Each alternative as text with the reason it was rejected (matched by its
    ``action``, ``option`` or ``name``), and the rejection reasons no alternative
    names; at most :data:`MAX_ALTERNATIVES` of each."""
    reasons = dict(decision.rejection_reasons)
    pairs: list[tuple[str, str | None]] = []
    for alt in list(decision.alternatives)[:MAX_ALTERNATIVES]:
        name = next((alt[k] for k in ("action", "option", "name") if k in alt), None)
        reason = reasons.pop(name, None) if isinstance(name, str) else None
        pairs.append((value_text(dict(alt)), reason))
    return pairs, list(reasons.items())[:MAX_ALTERNATIVES]


def highlight(text: str, words: Iterable[str]) -> Markup:
    """``text`` escaped, with every case-insensitive occurrence of ``words`` in
    ``<mark>``."""
    terms = sorted({w for w in words if w}, key=len, reverse=True)[:20]
    if not terms:
        return escape(text)
    pattern = re.compile("|".join(re.escape(t) for t in terms), re.IGNORECASE)
    out: list[str] = []
    last = 0
    for match in pattern.finditer(text):
        out.append(str(escape(text[last : match.start()])))
        out.append(f"<mark>{escape(match.group())}</mark>")
        last = match.end()
    out.append(str(escape(text[last:])))
    return Markup("".join(out))
