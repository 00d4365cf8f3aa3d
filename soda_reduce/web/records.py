"""The service's registry records as /registry and /oai serve them: one reading of the
template and the settings for both, so the record harvested and the record fetched agree.

The template is read at each request (an operator's edit shows at once, docs/operators.md),
in a thread: it is a small file, but a slow disk must not hold the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from lxml import etree

import soda_reduce
from soda_reduce.config import Settings
from soda_reduce.vo.dali import FatalError
from soda_reduce.vo.registry import Publication, service_identifier
from soda_reduce.vo.vosi import RecordValues, TemplateError, record_element
from soda_reduce.web.context import SERVICES, Services, base_url

log = logging.getLogger(__name__)

# in a source checkout; an installed service is given its own copy (docs/operators.md)
DEFAULT_TEMPLATE = (
    Path(soda_reduce.__file__).resolve().parents[1] / "vo_schemas" / "voresource-template.xml"
)


def settings_of(services: Services) -> Settings:
    return services.settings or Settings()


def publication_of(services: Services) -> Publication:
    """Identity and role from the settings; PublicationError if an identifier is unusable
    (checked when the routes are added, so a bad setting stops the start)."""
    settings = settings_of(services)
    return Publication(
        authority=services.authority,
        identifier=service_identifier(services.authority, settings.identifier),
        contact_email=settings.contact_email,
        publishing_registry=settings.publishing_registry,
        page_size=settings.oai_page_size,
        base_url_configured=bool(services.base_url),
    )


def record_values(services: Services, root_url: str, updated: datetime) -> RecordValues:
    settings = settings_of(services)
    return RecordValues(
        authority=services.authority,
        base_url=root_url,
        title=settings.title,
        publisher=settings.publisher or services.authority,
        contact_name=settings.contact_name,
        contact_email=settings.contact_email or "",
        updated=updated,
        identifier=publication_of(services).identifier,
    )


def _read(path: Path) -> tuple[bytes, datetime]:
    return path.read_bytes(), datetime.fromtimestamp(path.stat().st_mtime, UTC)


async def service_record(request: web.Request) -> etree._Element:
    """The service's ri:Resource (the filled template with capabilities); a FatalError
    (500) with the reason when the template is missing or broken."""
    services = request.app[SERVICES]
    path = settings_of(services).registry_template or DEFAULT_TEMPLATE
    try:
        template, updated = await asyncio.to_thread(_read, path)
    except OSError as exc:
        log.error("registry record template %s: %s", path, exc)
        raise FatalError(  # the file's name only: no server path in a public answer
            f"no registry record template {path.name} ({exc.strerror}): "
            "set SODA_REDUCE_REGISTRY_TEMPLATE"
        ) from None
    try:
        return record_element(template, record_values(services, base_url(request), updated))
    except TemplateError as exc:
        log.error("registry record template %s: %s", path, exc)
        raise FatalError(f"registry record template {path.name}: {exc}") from None
