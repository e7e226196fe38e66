"""The bearer token every request to the ledger service must carry, when one is set."""

from __future__ import annotations

import hmac
import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

__all__ = ["TOKEN_ENV_VAR", "BearerToken", "session_mac"]

TOKEN_ENV_VAR = "DECISION_TRACE_TOKEN"
"""Environment variable holding the service's token (``decision-trace serve --token``)."""

_TOKEN = re.compile(r"^[\x21-\x7e]+$")
"""What a token may hold: printable ASCII without spaces, as an HTTP header carries it."""


class BearerToken:
    """Checks ``Authorization: Bearer <token>`` in constant time.

    With no token (None or empty) every request is allowed. The token itself is never
    shown: not in ``repr()``, not in a message.

    The read API receives the instance as its ``token_check``: call it with the request
    (any :class:`starlette.requests.HTTPConnection`); it returns whether the request may
    go on::

        if not token_check(request):
            return JSONResponse({"status": 401, "message": "..."}, status_code=401)

    Args:
        token: The token clients must send; None or ``""`` for none.

    Raises:
        ValueError: the token holds characters a header cannot carry (spaces, control
            characters, anything beyond ASCII).
    """

    def __init__(self, token: str | None) -> None:
        if token and not _TOKEN.match(token):
            raise ValueError(
                "the token must be printable ASCII without spaces (it travels in an "
                "HTTP header and in gRPC metadata)"
            )
        self._expected = token.encode("ascii") if token else None

    @classmethod
    def from_environment(cls, token: str | None = None) -> BearerToken:
        """``token`` if given, else ``$DECISION_TRACE_TOKEN`` (unset or empty: none)."""
        return cls(token if token is not None else os.environ.get(TOKEN_ENV_VAR))

    @property
    def required(self) -> bool:
        """Whether requests need a token at all."""
        return self._expected is not None

    def check_header(self, value: str | bytes | None) -> bool:
        """Whether an ``Authorization`` header value carries the token (always True when
        no token is set). The comparison takes the same time whatever the value."""
        expected = self._expected
        if expected is None:
            return True
        if value is None:
            given = b""
        elif isinstance(value, bytes):
            given = value
        else:
            # Header values arrive as latin-1 text (starlette) or str (gRPC metadata).
            given = value.encode("latin-1", errors="replace")
        scheme, _, credentials = given.strip().partition(b" ")
        matches = hmac.compare_digest(credentials.strip(), expected)
        return matches and scheme.lower() == b"bearer"

    def __call__(self, connection: HTTPConnection) -> bool:
        """Whether this HTTP request (or WebSocket) may go on."""
        return self.check_header(connection.headers.get("authorization"))

    def __repr__(self) -> str:
        return f"BearerToken({'<set>' if self.required else 'None'})"


def session_mac(token: BearerToken, message: bytes) -> bytes | None:
    """An HMAC-SHA256 of ``message`` keyed with the token (None when no token is set):
    what the web view's login cookie carries instead of the token itself."""
    expected = token._expected
    if expected is None:
        return None
    return hmac.new(expected, b"decision-trace web session\x00" + message, "sha256").digest()
