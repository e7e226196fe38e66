"""Who may see the pages: the service's bearer token, as a header or as a login cookie.

With no token configured every page is open. With one, a request passes with
``Authorization: Bearer <token>`` (scripts, the read API's clients) or with the cookie
that ``POST /login`` sets after checking the token a person typed. The cookie never holds
the token: it holds an expiry time and an HMAC-SHA256 of it keyed with the token, so it
is worthless once the token changes, cannot be extended by its holder, and every replica
of the service that knows the token accepts it. Comparisons take constant time.
"""

from __future__ import annotations

import hmac
import time

from starlette.requests import HTTPConnection
from starlette.responses import Response

from .._auth import BearerToken, session_mac

__all__ = ["COOKIE_NAME", "SESSION_SECONDS", "Session"]

COOKIE_NAME = "decision_trace_session"
"""The login cookie's name."""

SESSION_SECONDS = 12 * 3600
"""How long a login lasts."""


class Session:
    """The pages' access check over the service's :class:`BearerToken`."""

    def __init__(self, token: BearerToken) -> None:
        self._token = token

    @property
    def required(self) -> bool:
        """Whether the pages need a token at all."""
        return self._token.required

    def allows(self, request: HTTPConnection) -> bool:
        """Whether ``request`` carries the bearer token or a valid, unexpired cookie."""
        if not self._token.required:
            return True
        header = request.headers.get("authorization")
        if header is not None:
            return self._token(request)
        return self._cookie_valid(request.cookies.get(COOKIE_NAME))

    def has_header(self, request: HTTPConnection) -> bool:
        """Whether ``request`` sent an ``Authorization`` header (a script, not a person)."""
        return "authorization" in request.headers

    def check_typed(self, typed: str) -> bool:
        """Whether the token a person typed into the login form is the token."""
        return self._token.check_header("Bearer " + typed)

    def login(self, response: Response, *, secure: bool, now: float | None = None) -> None:
        """Set the login cookie on ``response`` (HttpOnly, SameSite=Strict)."""
        expires = int(now if now is not None else time.time()) + SESSION_SECONDS
        mac = session_mac(self._token, str(expires).encode("ascii"))
        if mac is None:
            return
        response.set_cookie(
            COOKIE_NAME,
            f"{expires}.{mac.hex()}",
            max_age=SESSION_SECONDS,
            path="/",
            secure=secure,
            httponly=True,
            samesite="strict",
        )

    def logout(self, response: Response, *, secure: bool) -> None:
        """Clear the login cookie."""
        response.delete_cookie(
            COOKIE_NAME, path="/", secure=secure, httponly=True, samesite="strict"
        )

    def _cookie_valid(self, value: str | None) -> bool:
        if not value or len(value) > 200:
            return False
        expires_text, _, mac_hex = value.partition(".")
        if not expires_text.isdigit() or len(expires_text) > 12:
            return False
        expected = session_mac(self._token, expires_text.encode("ascii"))
        if expected is None:
            return False
        given = mac_hex.encode("ascii", "replace")
        matches = hmac.compare_digest(given, expected.hex().encode("ascii"))
        return matches and int(expires_text) > time.time()
