"""OAI-PMH 2.0 at /oai (GET and POST): the service as the publishing registry of its
authority, so the searchable registries can harvest its records (docs/operators.md).

Thin: the records come from `web.records` (the template of /registry, plus the generated
vg:Registry and vg:Authority records), the protocol from `vo.oai`. Protocol errors are
OAI-PMH documents with HTTP 200; a request body that is not a form, or too large, is the
client's badArgument too. With SODA_REDUCE_PUBLISHING_REGISTRY=false the route is not
offered at all: the archive's own publishing registry manages the authority then.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from aiohttp import web

from soda_reduce.vo.dali import UsageError
from soda_reduce.vo.oai import (
    MEDIA_TYPE,
    OaiError,
    OaiSet,
    Repository,
    error_document,
    records_of,
    respond,
)
from soda_reduce.vo.registry import MANAGED_SET, OAI_PATH, published_records
from soda_reduce.web.context import SERVICES, base_url, params_of
from soda_reduce.web.records import publication_of, service_record, settings_of

MANAGED = OaiSet(MANAGED_SET, "Resources whose authority this registry manages")


async def repository(request: web.Request) -> Repository:
    """The records as of now: the template is read at each request, like /registry's."""
    services = request.app[SERVICES]
    publication = publication_of(services)
    root = base_url(request)
    service = await service_record(request)
    resources = published_records(service, publication, root)  # service, registry, authority
    return Repository(
        name=settings_of(services).title,
        base_url=f"{root}{OAI_PATH}",
        admin_email=publication.admin_email,
        records=records_of(resources, [MANAGED.spec]),
        sets=(MANAGED,),
        page_size=publication.page_size,
        description=resources[1],  # the vg:Registry record (Identify's description)
    )


async def oai(request: web.Request) -> web.Response:
    found = await repository(request)
    try:
        pairs = await params_of(request)  # the query, and on POST the form
    except UsageError as exc:  # not a form, too large, too slow: OAI-PMH's badArgument
        body = error_document(found, OaiError("badArgument", exc.message))
    else:
        body = await asyncio.to_thread(respond, pairs, found, datetime.now(UTC))
    return web.Response(body=body, content_type=MEDIA_TYPE, charset="utf-8")


def add_routes(app: web.Application) -> None:
    if not settings_of(app[SERVICES]).publishing_registry:
        return
    publication_of(app[SERVICES])  # a bad identifier setting stops the start
    app.router.add_get(OAI_PATH, oai)
    app.router.add_post(OAI_PATH, oai)
