"""Anonymous sessions: a random token in a cookie, so an anonymous caller lists its own jobs.

Without sessions every anonymous job had the same owner (none), so every anonymous caller
listed, and could then change, everyone's anonymous jobs. A session starts at the caller's
first job creation: 256 random bits in an HttpOnly, SameSite=Lax cookie (Secure over https).
Its jobs are owned by ``anon:`` + the SHA-256 of the token: the store never holds the token
itself, so a leaked database does not let anyone act as a session. No key is needed for the
hash: the token is random, not a guessable secret, and every API replica derives the same
owner without sharing configuration. pyvo's ``requests.Session`` keeps the cookie, as
browsers do.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from urllib.parse import urlsplit

from aiohttp import web

from soda_reduce.web.context import ANONYMOUS_PREFIX, SERVICES

COOKIE = "soda_reduce_session"
TOKEN_BYTES = 32  # 256 bits
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def session_owner(token: str) -> str:
    return ANONYMOUS_PREFIX + hashlib.sha256(token.encode("ascii")).hexdigest()


def token_of(request: web.Request) -> str | None:
    """The session token the caller sent, if it has the form of one (else: no session)."""
    token = request.cookies.get(COOKIE)
    return token if token is not None and _TOKEN.fullmatch(token) else None


def set_session_cookie(request: web.Request, response: web.StreamResponse, token: str) -> None:
    """(Re)set the cookie; it lasts as long as the session's longest-lived job may."""
    services = request.app[SERVICES]
    configured = services.base_url
    parts = urlsplit(configured) if configured else None
    secure = request.scheme == "https" or (parts is not None and parts.scheme == "https")
    path = (parts.path.rstrip("/") if parts is not None else "") or "/"
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(services.jobs.limits.max_destruction.total_seconds()),
        path=path,
        secure=secure,
        httponly=True,
        samesite="Lax",
    )
