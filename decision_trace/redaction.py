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
- In ``context``, ``alternatives``, ``rejection_reasons``, object states, metadata and
  actor metadata, at any depth, the value of every key that contains the name as whole
  words. A key (and a name) is split into words at ``_``, ``-``, ``.``, spaces and any
  other punctuation, at camelCase humps (``customerEmail``, ``EmailAddress``,
  ``HTTPEmail``) and between letters and digits (``email2``); words compare
  case-insensitively, and the name's last word may carry a plural ``s``/``es``. So
  ``"email"`` covers ``email``, ``Email``, ``customer_email``, ``customerEmail``,
  ``email_address``, ``EmailAddress``, ``billing.email``, ``contact-email``,
  ``emails``, ``backupEmails``, and also ``email_verified`` and ``email_count`` (a key
  about e-mail is treated as holding one); it does not cover ``emailed``,
  ``e_mail``, ``mail``, ``gmail`` or ``emailaddr`` (one word). A name of several words
  (``"phone_number"`` or ``"phoneNumber"``: stored as ``phone_number``, the same field)
  matches those words in sequence (``customer_phone_number``, ``phoneNumbers``).
- Under a matching key, every value is redacted: a string or number as itself, each
  item of a list and each value of a nested mapping separately, at any depth (the
  nested mapping's keys are kept: do not key a mapping by personal data). ``True``,
  ``False`` and ``None`` are kept (``email_verified: true`` says nothing about who),
  with or without ``hash_key``.

With ``hash_key``, a value is replaced by ``"hmac-sha256:"`` and the hex HMAC-SHA256 of
its text (strings as they are, numbers as their JSON), so the events of one person still
group together and ``Redaction.pseudonym("ann@example.com")`` finds them; without it,
the matching key is dropped with its whole value (unless that is ``True``, ``False`` or
``None``). Free text (descriptions, reasoning, error messages, the reasons under
``rejection_reasons`` keys that do not match, mapping keys, ids, tags) is not scanned:
do not write personal data there.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ._json import coerce_json
from .errors import InvalidInputError
from .models import Actor, ActorType, DecisionTrace, TrackedObject

__all__ = ["Redaction"]

PSEUDONYM_PREFIX = "hmac-sha256:"
"""How a hashed value starts."""

# A key's runs of letters or digits (so ``_``, ``-``, ``.``, spaces and any punctuation
# separate words); letter runs are split further at camelCase humps.
_RUN = re.compile(r"[^\W\d_]+|\d+")


def _words(key: str) -> list[str]:
    """``customerEmail_address.v2`` -> ``["customer", "email", "address", "v", "2"]``;
    ``HTTPEmail`` -> ``["http", "email"]``."""
    words: list[str] = []
    for run in _RUN.findall(key):
        if run.isdigit() or run.islower() or run.isupper():
            words.append(run.lower())
            continue
        start = 0
        for i in range(1, len(run)):
            cur = run[i]
            if not cur.isupper():
                continue
            prev = run[i - 1]
            # a hump (customerEmail), or the last capital of an acronym before a word
            # (HTTPEmail: HTTP | Email)
            if prev.islower() or (prev.isupper() and i + 1 < len(run) and run[i + 1].islower()):
                words.append(run[start:i].lower())
                start = i
        words.append(run[start:].lower())
    return words


def _kept(value: Any) -> bool:
    """True, False and None say nothing about who: kept even under a redacted key."""
    return value is None or isinstance(value, bool)


def _same_word(word: str, field: str) -> bool:
    """``word`` is ``field``, or its plural by ``s`` or ``es``."""
    return word == field or (
        word.startswith(field) and word[len(field) :] in ("s", "es") and not field.isdigit()
    )


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
        words = [_words(f) for f in self.fields]
        if not all(words):
            raise InvalidInputError("redact.fields", "each name must contain a letter or digit")
        # Stored as its words in snake_case: "phoneNumber" and "phone-number" are one field.
        object.__setattr__(self, "fields", tuple("_".join(w) for w in words))

    def pseudonym(self, value: Any) -> str:
        """The hashed form of ``value``, as stored (needs ``hash_key``)."""
        if self.hash_key is None:
            raise InvalidInputError("redact.hash_key", "is needed to compute pseudonyms")
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        data = text.encode("utf-8", "surrogatepass")
        return PSEUDONYM_PREFIX + hmac.new(self.hash_key, data, hashlib.sha256).hexdigest()

    def covers(self, key: str) -> bool:
        """Whether a mapping key names a redacted field (see the module docstring)."""
        words = tuple(_words(key))
        if not words:
            return False
        for field_words in self._field_words():
            size = len(field_words)
            for start in range(len(words) - size + 1):
                if words[start : start + size - 1] == field_words[:-1] and _same_word(
                    words[start + size - 1], field_words[-1]
                ):
                    return True
        return False

    def _field_words(self) -> tuple[tuple[str, ...], ...]:
        cached: tuple[tuple[str, ...], ...] | None = self.__dict__.get("_words")
        if cached is None:
            cached = tuple(tuple(f.split("_")) for f in self.fields)
            object.__setattr__(self, "_words", cached)
        return cached

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
        """``value`` (JSON types) with the values under covered keys hashed or dropped,
        at any depth; built with an explicit stack, not recursion."""
        if not isinstance(value, (dict, list)):
            return value
        result: dict[str, Any] | list[Any] = {} if isinstance(value, dict) else []
        # (source, copy, under a covered key)
        stack: list[tuple[Any, Any, bool]] = [(value, result, False)]
        while stack:
            source, copy, covered = stack.pop()
            items: Iterable[tuple[Any, Any]] = (
                source.items() if isinstance(source, dict) else enumerate(source)
            )
            for key, item in items:
                hidden = covered or (isinstance(copy, dict) and self.covers(str(key)))
                if hidden and self.hash_key is None and not _kept(item):
                    continue  # dropped: only ever reached for a key of a mapping
                if isinstance(item, (dict, list)):
                    child: dict[str, Any] | list[Any] = {} if isinstance(item, dict) else []
                    stack.append((item, child, hidden))
                    new: Any = child
                elif hidden and not _kept(item):
                    new = self._replacement(item)
                else:
                    new = item
                if isinstance(copy, dict):
                    copy[key] = new
                else:
                    copy.append(new)
        return result

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
            rejection_reasons=self.value(decision.rejection_reasons, "rejection_reasons"),
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
