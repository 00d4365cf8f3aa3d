"""VOSI availability, capabilities and the registry record (issue #5)."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """No routes yet."""
