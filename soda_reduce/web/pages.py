"""HTML pages for people: job list, job page, raw-file page (issue #5)."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """No routes yet."""
