"""The tamper-evident chain of a ledger (docs/proving.md): what is hashed, how entries
link, and how a ledger's chain is checked. Both backends store the same entries and feed
:func:`verify_entries` the same way; this module knows no SQL.

Every event stored gets one **chain entry**, in commit order, and so does every act that
removes data on purpose (an erasure, a prune) and the adoption of events written before
the chain existed. An entry holds:

- ``skeleton``: SHA-256 of the event's non-personal skeleton, :func:`skeleton_bytes`
  (id, trace and parent ids, times, type, actor type, outcome, service, object types);
  for an act, SHA-256 of its body (canonical JSON: who asked, when, why, which events);
- ``commitment``: SHA-256 of a 16-byte random salt followed by the event's personal
  payload, :func:`payload_bytes` (description, actor id/name/details, reasoning and
  context, object ids and states, tags, error, metadata). The salt is stored with the
  payload and erased with it, so an erased payload cannot be guessed back from its
  commitment. Acts have an all-zero commitment;
- ``hash``: :func:`entry_hash` of the previous entry's hash and the entry's own fields.

The bytes hashed are the values the ledger holds, in the order of :data:`SKELETON_COLUMNS`
and :data:`PAYLOAD_COLUMNS`, framed as one JSON array (UTF-8, no whitespace, non-ASCII
unescaped: ``json.dumps(values, ensure_ascii=False, separators=(",", ":"))``): the JSON
text columns are included as the text stored, never decoded and re-encoded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Literal, NamedTuple

from ._rows import EVENT_COLUMNS, StoredRow
from .errors import InvalidInputError
from .models import ObjectType

__all__ = [
    "GENESIS",
    "KIND_ACT",
    "KIND_EVENT",
    "PAYLOAD_COLUMNS",
    "SKELETON_COLUMNS",
    "USER_SUBJECT",
    "Act",
    "ChainEntry",
    "ChainState",
    "Checkpoint",
    "ErasureReport",
    "FoundEvent",
    "Problem",
    "VerifyReport",
    "act_body",
    "entry_hash",
    "erased_form",
    "erasure_act",
    "link_act",
    "link_events",
    "parse_subject",
    "payload_bytes",
    "payload_of",
    "prune_act",
    "pseudonym",
    "row_digests",
    "skeleton_bytes",
    "verify_entries",
]

PROGRESS_EVERY = 10_000
"""How often (in entries) :func:`verify_entries` reports its progress."""

GENESIS = bytes(32)
"""The "previous hash" of a ledger's first entry."""

KIND_EVENT = 0
"""A chain entry for one stored event."""
KIND_ACT = 1
"""A chain entry for an act on the ledger: an erasure, a prune, an adoption."""

_SKELETON_TAG = "dt-skeleton-1"
_PAYLOAD_TAG = "dt-payload-1"
_ENTRY_TAG = b"dt-chain-1"
NO_COMMITMENT = bytes(32)

SKELETON_COLUMNS = (
    "id",
    "trace_id",
    "parent_id",
    "start_ns",
    "duration_ns",
    "event_type",
    "actor_type",
    "outcome",
    "service_name",
)
"""The event columns of the skeleton (in this order, then the object types in order):
what an erasure keeps and the chain always proves."""

PAYLOAD_COLUMNS = (
    "description",
    "actor_id",
    "actor_name",
    "actor_json",
    "reasoning",
    "decision_json",
    "objects_json",
    "tags_json",
    "error",
    "metadata_json",
)
"""The event columns of the personal payload (in this order, then the object ids in
order): what an erasure removes, proven through the salted commitment."""

_dumps = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, check_circular=False, separators=(",", ":")
).encode


def skeleton_bytes(values: Sequence[Any], object_types: Sequence[str]) -> bytes:
    """The canonical bytes of an event's skeleton: ``values`` are the
    :data:`SKELETON_COLUMNS` as stored, ``object_types`` the types of the objects it
    touched, in order."""
    return _dumps([_SKELETON_TAG, *values, list(object_types)]).encode()


def payload_bytes(values: Sequence[Any], object_ids: Sequence[str]) -> bytes:
    """The canonical bytes of an event's personal payload: ``values`` are the
    :data:`PAYLOAD_COLUMNS` as stored, ``object_ids`` the ids of the objects it touched,
    in order."""
    return _dumps([_PAYLOAD_TAG, *values, list(object_ids)]).encode()


_sha256 = hashlib.sha256


_skeleton_of = itemgetter(*(EVENT_COLUMNS.index(c) for c in SKELETON_COLUMNS))
_payload_of = itemgetter(*(EVENT_COLUMNS.index(c) for c in PAYLOAD_COLUMNS))
payload_of = _payload_of
"""The :data:`PAYLOAD_COLUMNS` of a stored row (:data:`~decision_trace._rows.EVENT_COLUMNS`
order)."""


ERASED_PREFIX = "erased-"
"""How every pseudonym an erasure leaves starts (:func:`pseudonym`)."""


def erased_form(payload: Sequence[Any], object_ids: Sequence[str]) -> bool:
    """Whether an event's payload (the :data:`PAYLOAD_COLUMNS` as stored, and its object
    ids) is what an erasure leaves: an empty description, pseudonyms for ids, nothing
    else. An erased event whose payload holds anything more was written to afterwards."""
    description, actor_id, *rest = payload
    return (
        description == ""
        and (actor_id is None or str(actor_id).startswith(ERASED_PREFIX))
        and all(value is None for value in rest)
        and all(str(i).startswith(ERASED_PREFIX) for i in object_ids)
    )


def row_digests(
    row: StoredRow, object_types: Sequence[str], object_ids: Sequence[str], salt: bytes | None
) -> tuple[bytes, bytes | None]:
    """``(skeleton digest, commitment)`` of a stored row (in
    :data:`~decision_trace._rows.EVENT_COLUMNS` order), as the module's docstring
    defines them; the commitment is None when the row has no salt (its payload was
    removed)."""
    skeleton = _sha256(skeleton_bytes(_skeleton_of(row), object_types)).digest()
    if salt is None:
        return skeleton, None
    return skeleton, _sha256(salt + payload_bytes(_payload_of(row), object_ids)).digest()


def link_events(
    rows: Sequence[StoredRow],
    objects: Sequence[tuple[Sequence[str], Sequence[str]]],
    salts: Sequence[bytes],
    previous: bytes,
) -> list[ChainEntry]:
    """The chain entries of ``rows`` (stored rows about to be committed, in commit order,
    each led by its position), after the entry whose hash is ``previous``; ``objects``
    gives each row's ``(object types, object ids)`` and ``salts`` its salt."""
    entries: list[ChainEntry] = []
    for row, (types, ids), salt in zip(rows, objects, salts, strict=True):
        skeleton, commitment = row_digests(row, types, ids, salt)
        assert commitment is not None
        position, start_ns = row[0], row[4]
        previous = entry_hash(previous, position, KIND_EVENT, start_ns, skeleton, commitment)
        entries.append(
            ChainEntry(position, KIND_EVENT, row[1], start_ns, skeleton, commitment, previous)
        )
    return entries


def link_act(previous: bytes, position: int, at_ns: int, body: str) -> ChainEntry:
    """The chain entry of an act (its body from :func:`act_body`) at ``position``."""
    skeleton = _sha256(body.encode()).digest()
    digest = entry_hash(previous, position, KIND_ACT, at_ns, skeleton, NO_COMMITMENT)
    return ChainEntry(position, KIND_ACT, None, at_ns, skeleton, NO_COMMITMENT, digest, body)


def entry_hash(
    previous: bytes, position: int, kind: int, start_ns: int, skeleton: bytes, commitment: bytes
) -> bytes:
    """The hash of a chain entry: SHA-256 of ``dt-chain-1``, the previous entry's hash,
    the position and start time (8 bytes each, big-endian, signed), the kind (1 byte),
    the skeleton digest and the commitment."""
    return _sha256(
        _ENTRY_TAG
        + previous
        + position.to_bytes(8, "big", signed=True)
        + kind.to_bytes(1, "big")
        + start_ns.to_bytes(8, "big", signed=True)
        + skeleton
        + commitment
    ).digest()


def pseudonym(key: bytes, subject_type: str, subject_id: str) -> str:
    """The keyed pseudonym an erasure leaves in place of an id: ``erased-`` and 24 hex
    digits of HMAC-SHA-256 under the ledger's own key. The same subject gets the same
    pseudonym in one ledger, so its erased events stay linked; whoever holds the ledger
    (and so its key) can test a guessed id, nobody can read the id back."""
    digest = hmac.new(key, f"{subject_type}:{subject_id}".encode(), hashlib.sha256).hexdigest()
    return f"{ERASED_PREFIX}{digest[:24]}"


def erasure_act(
    subject: str, subject_type: str, reason: str, requested_by: str, positions: Sequence[int]
) -> dict[str, Any]:
    """The record of an erasure (both backends append the same): ``subject`` is the
    subject's pseudonym, ``positions`` the chain positions of the events erased."""
    import time

    return {
        "act": "erasure",
        "at_ns": time.time_ns(),
        "subject": subject,
        "subject_type": subject_type,
        "reason": reason,
        "requested_by": requested_by,
        "events": len(positions),
        "positions": list(positions),
    }


def prune_act(before_ns: int, events: int, *, keep_skeleton: bool) -> dict[str, Any]:
    """The record of a prune of ``events`` events that started before ``before_ns``
    (their payloads only, with ``keep_skeleton``)."""
    import time

    return {
        "act": "prune-payload" if keep_skeleton else "prune",
        "at_ns": time.time_ns(),
        "before_ns": before_ns,
        "events": events,
    }


def act_body(values: dict[str, Any]) -> str:
    """The canonical JSON body of an act (keys sorted): what its skeleton digest hashes."""
    return json.dumps(values, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


USER_SUBJECT = "user"
"""The subject type of a user actor (``user:ID``); every other subject type is an
object type (``customer:ID``)."""


def parse_subject(text: str) -> tuple[str, str]:
    """``(type, id)`` of an erasure subject written ``TYPE:ID``: ``user:42`` (a user
    actor) or an object type and id (``customer:c-9``; the id may hold colons).

    Raises:
        InvalidInputError: no colon, an empty id, or an unknown type (the message lists
            the types).
    """
    kind, sep, subject_id = text.partition(":")
    kind = kind.strip().lower()
    types = [USER_SUBJECT, *(t.value for t in ObjectType)]
    if not sep or not subject_id:
        raise InvalidInputError(
            "subject", f"{text!r} is not TYPE:ID (for example user:42 or customer:c-9)"
        )
    if kind not in types:
        raise InvalidInputError(
            "subject",
            f"type {kind!r} is not one of: {', '.join(types)} (user is a user actor; the "
            "others are object types)",
        )
    return kind, subject_id


@dataclass(frozen=True)
class ErasureReport:
    """What an erasure removed (or would remove, on a dry run)."""

    subject_type: str
    pseudonym: str
    """What now stands in the ledger for the subject's id."""
    events: int
    """Events whose payload was (or would be) erased."""
    event_ids: tuple[str, ...]
    """Their ids, oldest first."""
    position: int | None
    """The chain position of the erasure's act; None on a dry run or when nothing was
    erased."""


@dataclass(frozen=True)
class ChainState:
    """Where a ledger's chain stands: what a checkpoint signs."""

    ledger_id: str
    position: int
    """The last entry's position (0 for an empty chain)."""
    entries: int
    hash: bytes
    """The last entry's stored hash (:data:`GENESIS` for an empty chain)."""


class ChainEntry(NamedTuple):
    """One stored chain entry, as the ledger holds it. (A named tuple rather than a
    frozen dataclass, as :class:`FoundEvent`: verify and the writers make one an event,
    and a dataclass's ``__init__`` cost more than hashing the event.)"""

    position: int
    kind: int
    event_id: str | None
    start_ns: int
    skeleton: bytes
    commitment: bytes
    hash: bytes
    body: str | None = None
    """The act's canonical JSON (acts only)."""


class FoundEvent(NamedTuple):
    """What the ledger holds for the event at one position (its own row)."""

    position: int
    event_id: str
    skeleton: bytes
    """SHA-256 of the skeleton recomputed from the stored row."""
    commitment: bytes | None
    """The commitment recomputed from the stored payload and salt; None when the payload
    was removed (erased, or pruned with ``--keep-skeleton``)."""
    mismatch: str | None = None
    """What of the stored row disagrees with what was hashed or erased: a column that
    disagrees with the hashed payload (PostgreSQL keeps a copy), or the payload of an
    erased event, which holds data again (:func:`erased_form`)."""


@dataclass(frozen=True)
class Act:
    """An act recorded in the chain, decoded from its body."""

    position: int
    kind: Literal["erasure", "prune", "prune-payload", "adopt"]
    at_ns: int
    body: dict[str, Any]


ProblemKind = Literal[
    "changed", "deleted", "inserted", "reordered", "broken", "erased-unrecorded", "checkpoint"
]


@dataclass(frozen=True)
class Problem:
    """One thing ``verify`` found wrong."""

    kind: ProblemKind
    position: int
    event_id: str | None
    detail: str

    def __str__(self) -> str:
        who = f"event {self.event_id} " if self.event_id else ""
        return f"{self.kind}: {who}at position {self.position}: {self.detail}"


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement of a ledger's chain at one moment (:mod:`decision_trace.checkpoint`
    reads, writes and signs them)."""

    ledger_id: str
    position: int
    entries: int
    hash: bytes
    at_ns: int


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_entries` found."""

    entries: int
    """Chain entries checked."""
    events: int
    """Events whose skeleton and payload both verified."""
    erased: int
    """Events whose payload an erasure removed (their skeleton verified)."""
    payload_pruned: int
    """Events whose payload ``prune --keep-skeleton`` removed (their skeleton verified)."""
    pruned: int
    """Events a recorded prune deleted."""
    acts: tuple[Act, ...]
    head_position: int
    head_hash: bytes
    problems: tuple[Problem, ...]
    """The first problems found, in chain order (at most ``max_problems``)."""
    problem_count: int
    checkpoints_checked: int = 0

    @property
    def ok(self) -> bool:
        """Whether everything verified."""
        return self.problem_count == 0


@dataclass
class _Acts:
    erased: set[int] = field(default_factory=set)
    payload_cutoffs: list[tuple[int, int]] = field(default_factory=list)
    prune_cutoffs: list[tuple[int, int]] = field(default_factory=list)


def _index_acts(acts: Iterable[Act]) -> _Acts:
    index = _Acts()
    for act in acts:
        if act.kind == "erasure":
            index.erased.update(int(p) for p in act.body.get("positions", ()))
        elif act.kind == "prune-payload":
            index.payload_cutoffs.append((act.position, int(act.body["before_ns"])))
        elif act.kind == "prune":
            index.prune_cutoffs.append((act.position, int(act.body["before_ns"])))
    return index


def _covered(cutoffs: list[tuple[int, int]], position: int, start_ns: int) -> bool:
    return any(position < at and start_ns < before for at, before in cutoffs)


def decode_act(entry: ChainEntry) -> Act | None:
    """The act an entry records, or None if its body is not one (a damaged entry)."""
    try:
        body = json.loads(entry.body or "")
        kind = body["act"]
        at_ns = int(body["at_ns"])
    except (ValueError, KeyError, TypeError):
        return None
    if kind not in ("erasure", "prune", "prune-payload", "adopt"):
        return None
    return Act(entry.position, kind, at_ns, body)


def verify_entries(
    chain: Iterator[tuple[ChainEntry | None, FoundEvent | None]],
    acts: Sequence[Act],
    *,
    checkpoints: Sequence[Checkpoint] = (),
    max_problems: int = 100,
    progress: Callable[[int], object] | None = None,
) -> VerifyReport:
    """Check a ledger's chain.

    Args:
        chain: In position order, each position that has a chain entry or an event row
            (or both): ``(entry, found)``. A backend merges its chain table with its
            events.
        acts: Every act entry of the chain, decoded (:func:`decode_act`): what was
            erased and pruned on purpose must be known before the events it covers.
        checkpoints: Checkpoints (already found authentic) the chain must reach.
        max_problems: How many problems to keep (all are counted).
        progress: Called with the number of entries checked so far, every
            :data:`PROGRESS_EVERY` entries and at the end.

    Returns:
        The report; ``ok`` only when every entry, event and checkpoint verified.
    """
    index = _index_acts(acts)
    wanted = {cp.position: cp for cp in checkpoints}
    reached: set[int] = set()
    problems: list[Problem] = []
    count = 0
    misplaced: dict[str, int] = {}  # event id -> position it was found at, wrongly
    expected_at: dict[str, int] = {}  # event id -> position the chain has it at

    def problem(kind: ProblemKind, position: int, event_id: str | None, detail: str) -> None:
        nonlocal count
        count += 1
        if len(problems) < max_problems:
            problems.append(Problem(kind, position, event_id, detail))

    previous = GENESIS
    entries = events = erased = payload_pruned = pruned = 0
    head_position = 0
    for entry, found in chain:
        if entry is None:
            assert found is not None
            problem(
                "inserted",
                found.position,
                found.event_id,
                "the event is stored but not in the chain (added after the fact)",
            )
            continue
        entries += 1
        if progress is not None and not entries % PROGRESS_EVERY:
            progress(entries)
        position = entry.position
        computed = entry_hash(
            previous, position, entry.kind, entry.start_ns, entry.skeleton, entry.commitment
        )
        if computed != entry.hash:
            problem(
                "broken",
                position,
                entry.event_id,
                "the chain does not link here: an entry before it was deleted, or entries "
                "were inserted, reordered or edited",
            )
        # Go on from the stored hash: each break is reported once, not at every later
        # entry (each stored hash is itself checked against the one before it).
        previous = entry.hash
        head_position = position
        checkpoint = wanted.get(position)
        if checkpoint is not None:
            reached.add(position)
            if checkpoint.hash != entry.hash or checkpoint.entries != entries:
                problem(
                    "checkpoint",
                    position,
                    None,
                    f"the chain differs from the checkpoint of {_iso(checkpoint.at_ns)} "
                    "(it was rewritten after the checkpoint)",
                )
        if entry.kind == KIND_ACT:
            if _sha256((entry.body or "").encode()).digest() != entry.skeleton:
                problem("changed", position, None, "the record of an act was edited")
            if found is not None:
                problem("inserted", position, found.event_id, "an event row sits on an act")
            continue
        event_id = entry.event_id
        if found is None:
            if _covered(index.prune_cutoffs, position, entry.start_ns):
                pruned += 1
            else:
                problem("deleted", position, event_id, "the event is in the chain but not stored")
            continue
        if found.skeleton != entry.skeleton:
            if found.event_id != event_id:
                misplaced[found.event_id] = position
                if event_id is not None:
                    expected_at[event_id] = position
            problem(
                "changed",
                position,
                found.event_id,
                "its id, time, type, actor type, outcome or object types were changed",
            )
            continue
        if found.commitment is None:
            was_erased = position in index.erased
            if not was_erased and not _covered(index.payload_cutoffs, position, entry.start_ns):
                problem(
                    "erased-unrecorded",
                    position,
                    event_id,
                    "its payload is gone, and no erasure or prune in the chain removed it",
                )
            elif found.mismatch is not None:
                problem("changed", position, event_id, f"{found.mismatch} was changed")
            elif was_erased:
                erased += 1
            else:
                payload_pruned += 1
            continue
        if found.commitment != entry.commitment or found.mismatch is not None:
            what = found.mismatch or "its content"
            problem("changed", position, event_id, f"{what} was changed")
            continue
        events += 1
    if progress is not None:
        progress(entries)
    for cp in checkpoints:
        if cp.position not in reached:
            problem(
                "checkpoint",
                cp.position,
                None,
                f"the ledger no longer reaches the checkpoint of {_iso(cp.at_ns)} "
                f"({cp.entries} entries up to position {cp.position}; the chain ends at "
                f"{head_position}): it was truncated or rebuilt",
            )
    # An event found where the chain has another, and chained where another is found:
    # two rows swapped (or moved), rather than two edits.
    swapped = [
        Problem(
            "reordered",
            found_at,
            event_id,
            f"the chain has this event at position {expected_at[event_id]}",
        )
        for event_id, found_at in misplaced.items()
        if event_id in expected_at
    ]
    if swapped:
        moved = {p.event_id for p in swapped}
        problems = [p for p in problems if not (p.kind == "changed" and p.event_id in moved)]
        problems = sorted(problems + swapped, key=lambda p: p.position)[:max_problems]
    return VerifyReport(
        entries=entries,
        events=events,
        erased=erased,
        payload_pruned=payload_pruned,
        pruned=pruned,
        acts=tuple(acts),
        head_position=head_position,
        head_hash=previous,
        problems=tuple(problems),
        problem_count=count,
        checkpoints_checked=len(checkpoints),
    )


def _iso(ns: int) -> str:
    from .record import datetime_from_ns

    return datetime_from_ns(ns).isoformat().replace("+00:00", "Z")
