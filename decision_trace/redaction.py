"""``Redaction``: keep personal data out of spans, hence out of the ledger and OTLP.

Pass one to ``DecisionTraceClient(redact=...)``. It is applied while the builder encodes
an event, before the span exists, so the plaintext reaches neither the SQLite file (nor
its write-ahead log) nor any collector::

    from decision_trace import DecisionTraceClient, Redaction

    client = DecisionTraceClient(redact=Redaction(hash_key=b"from-your-secret-store"))
    client.trace("order.created").by_user("u-1", email="ann@example.com").record()
    # user.email is stored as "hmac-sha256:3f0c…", the same for every event of Ann

What is redacted, for each name in ``fields`` (default: ``("email",)``):

- ``"email"``: the actor's e-mail (``user.email``); ``"name"``: a *user* actor's name
  (``user.name``; agents', jobs' and systems' names are not personal data).
- In ``context``, ``alternatives``, object states, metadata and actor metadata, at any
  depth, every key equal to the name or ending in ``_<name>``, ``-<name>`` or
  ``.<name>`` (case-insensitive: ``email``, ``customer_email``, ``billing.Email``).

With ``hash_key``, a value is replaced by ``"hmac-sha256:"`` and the hex HMAC-SHA256 of
its text (strings as they are, other values as their JSON), so the events of one person
still group together and ``Redaction.pseudonym("ann@example.com")`` finds them; without
it, the value is dropped. Free text (descriptions, reasoning, error messages) is not
scanned: do not write personal data there.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .attributes import coerce_json
from .errors import InvalidInputError
from .models import Actor, ActorType, DecisionTrace, TrackedObject

__all__ = ["Redaction"]

PSEUDONYM_PREFIX = "hmac-sha256:"
"""How a hashed value starts."""


@dataclass(frozen=True)
class Redaction:
    """Hash (keyed) or drop personal fields before they enter a span.

    Args:
        fields: What to redact; see the module docstring. Default: e-mail addresses.
        hash_key: The HMAC-SHA256 key (keep it secret, keep it stable). None drops the
            values instead of hashing them.
    """

    fields: tuple[str, ...] = ("email",)
    hash_key: bytes | None = None

    def __post_init__(self) -> None:
        if isinstance(self.fields, str) or not all(
            isinstance(f, str) and f.strip() for f in self.fields
        ):
            raise InvalidInputError("redact.fields", "must be a tuple of non-empty names")
        if self.hash_key is not None and (
            not isinstance(self.hash_key, bytes) or not self.hash_key
        ):
            raise InvalidInputError("redact.hash_key", "must be non-empty bytes or None")
        object.__setattr__(self, "fields", tuple(f.strip().lower() for f in self.fields))

    def pseudonym(self, value: Any) -> str:
        """The hashed form of ``value``, as stored (needs ``hash_key``)."""
        if self.hash_key is None:
            raise InvalidInputError("redact.hash_key", "is needed to compute pseudonyms")
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        data = text.encode("utf-8", "surrogatepass")
        return PSEUDONYM_PREFIX + hmac.new(self.hash_key, data, hashlib.sha256).hexdigest()

    def covers(self, key: str) -> bool:
        """Whether a mapping key names a redacted field."""
        name = key.lower()
        return any(
            name == field or name.endswith(("_" + field, "-" + field, "." + field))
            for field in self.fields
        )

    # -- applied by the builder ---------------------------------------------------------

    def _replacement(self, value: Any) -> Any:
        return None if self.hash_key is None or value is None else self.pseudonym(value)

    def value(self, value: Any, path: str) -> Any:
        """``value`` coerced to JSON types (as it would be stored), redacted keys
        hashed or dropped at any depth."""
        try:
            coerced = coerce_json(value, path)
        except RecursionError:
            raise InvalidInputError(path, "is nested too deeply to store") from None
        return self._scrub(coerced)

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, dict):
            result = {}
            for key, item in value.items():
                if not self.covers(key):
                    result[key] = self._scrub(item)
                elif self.hash_key is not None:
                    result[key] = self._replacement(item)
            return result
        if isinstance(value, list):
            return [self._scrub(item) for item in value]
        return value

    def actor(self, actor: Actor) -> Actor:
        email = actor.email
        if email is not None and "email" in self.fields:
            email = self._replacement(email)
        name = actor.name
        if name is not None and "name" in self.fields and actor.type is ActorType.USER:
            name = self._replacement(name)
        metadata = self.value(actor.metadata, "actor.metadata") if actor.metadata else {}
        return replace(actor, email=email, name=name, metadata=metadata)

    def decision(self, decision: DecisionTrace) -> DecisionTrace:
        return replace(
            decision,
            context=self.value(decision.context, "context"),
            alternatives=tuple(
                self.value(a, f"alternatives[{i}]") for i, a in enumerate(decision.alternatives)
            ),
        )

    def tracked_object(self, obj: TrackedObject) -> TrackedObject:
        name = obj.object_type.value
        return replace(
            obj,
            state=self.value(obj.state, f"{name} state"),
            state_before=None
            if obj.state_before is None
            else self.value(obj.state_before, f"{name} state_before"),
            state_after=None
            if obj.state_after is None
            else self.value(obj.state_after, f"{name} state_after"),
        )

    def metadata(self, values: Mapping[str, Any]) -> dict[str, Any]:
        scrubbed = self.value(values, "metadata")
        assert isinstance(scrubbed, dict)
        return scrubbed
