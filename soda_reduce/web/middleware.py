"""Identity and error middlewares.

Identity: a trusted header set by an authenticating proxy (only honoured when
configured: otherwise anyone could claim any name), or a bearer token from the
configured tokens file; anonymous callers are allowed unless configured off.

Errors: a DALI error raised anywhere becomes its HTTP status and a DALI error
VOTable; anything unexpected becomes a 500 with the same document and a log
line, never a traceback page.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from soda_reduce.vo.dali import VOTABLE_MEDIA_TYPE, DaliError, render_error_votable
from soda_reduce.web.context import OWNER

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class AuthConfig:
    trusted_header: str | None = None
    tokens: dict[str, str] = field(default_factory=dict)  # token -> owner
    allow_anonymous: bool = True

    @classmethod
    def load(
        cls, trusted_header: str | None, tokens_file: Path | None, allow_anonymous: bool
    ) -> AuthConfig:
        """Tokens file: one ``TOKEN OWNER`` per line; blank lines and # comments ignored."""
        tokens: dict[str, str] = {}
        if tokens_file is not None:
            for line in tokens_file.read_text().splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                token, _, owner = line.partition(" ")
                if not owner.strip():
                    raise ValueError(f"{tokens_file}: line without an owner: {line!r}")
                tokens[token] = owner.strip()
        return cls(trusted_header, tokens, allow_anonymous)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=render_error_votable(message),
        content_type=VOTABLE_MEDIA_TYPE,
        headers=headers,
    )


def auth_middleware(config: AuthConfig):
    @web.middleware
    async def identify(request: web.Request, handler: Handler) -> web.StreamResponse:
        owner: str | None = None
        if config.trusted_header:
            owner = request.headers.get(config.trusted_header) or None
        auth = request.headers.get("Authorization", "")
        if owner is None and auth.lower().startswith("bearer "):
            owner = config.tokens.get(auth[7:].strip())
            if owner is None:
                return _error(
                    401,
                    "unknown bearer token",
                    {"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
        if owner is None and not config.allow_anonymous and _protected(request):
            return _error(401, "authentication required", {"WWW-Authenticate": "Bearer"})
        request[OWNER] = owner
        return await handler(request)

    return identify


def _protected(request: web.Request) -> bool:
    """Jobs need an identity; VOSI documents and products stay public."""
    return request.path.startswith("/soda/async")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except DaliError as exc:
        return _error(exc.http_status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.status == 405 or exc.content_type == VOTABLE_MEDIA_TYPE:
            raise
        return _error(exc.status, exc.reason if exc.text is None else exc.text.strip())
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "internal error; the service log has the details")
