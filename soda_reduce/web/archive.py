"""/archive/raw: the indexed raw files as a VOTable (issue #5)."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """No routes yet."""
