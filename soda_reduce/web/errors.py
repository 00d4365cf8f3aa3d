"""Error documents in the format each route's standard wants.

One place decides: SODA's ``/soda/sync`` answers ``text/plain`` beginning with a SODA
error label (SODA 1.0 section 5.2); the HTML pages answer an HTML page; ``/plan`` (a
text tool) answers text; every other route (UWS, DataLink, VOSI, products, the archive)
answers a DALI error VOTable, DataLink's with its text led by a DataLink fault
(``UsageFault: ...``, DataLink 1.1 3.4). The identity and error middlewares and the server's own
refusals (404 of unknown routes, 405, 413) all go through `error_response`.
"""

from __future__ import annotations

import html
import logging
import re
from http import HTTPStatus
from typing import Literal

from aiohttp import web

from soda_reduce.vo.dali import VOTABLE_MEDIA_TYPE, render_error_votable
from soda_reduce.vo.datalink import error_document as datalink_error

log = logging.getLogger(__name__)
Format = Literal["soda", "html", "text", "votable", "datalink"]
HTML_PREFIXES = ("/jobs", "/raw", "/static")
PRODUCT_PAGE = re.compile(r"/products/[^/]+/.+/page")  # web/product_page.py (%2F decoded)
# HTTP statuses as SODA's labels name them (anything else is "Error")
_SODA_LABELS = {
    400: "UsageError",
    401: "AuthenticationError",
    403: "AuthorizationError",
    404: "UsageError",
    408: "UsageError",
    413: "UsageError",
    415: "UsageError",
    503: "ServiceUnavailable",
}


def route_format(path: str) -> Format:
    if path == "/soda/sync" or path.startswith("/soda/sync/"):
        return "soda"
    if path == "/plan":
        return "text"
    if path == "/datalink":  # a DALI VOTable whose text starts with a DataLink fault
        return "datalink"
    if path == "/" or path.startswith(HTML_PREFIXES) or PRODUCT_PAGE.fullmatch(path):
        return "html"
    return "votable"


def soda_label(status: int) -> str:
    return _SODA_LABELS.get(status, "Error")


def error_response(
    request: web.Request,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The error document for the request's route; ``message`` must be fit for the public."""
    fmt = route_format(request.path)
    if fmt == "soda":
        text = f"{soda_label(status)}: {message}\n"
        return web.Response(status=status, text=text, content_type="text/plain", headers=headers)
    if fmt == "text":
        return web.Response(
            status=status, text=f"{message}\n", content_type="text/plain", headers=headers
        )
    if fmt == "html":
        response = _html(request, status, message)
        if headers:
            response.headers.update(headers)
        return response
    body = datalink_error(status, message) if fmt == "datalink" else render_error_votable(message)
    return web.Response(
        status=status,
        body=body,
        content_type=VOTABLE_MEDIA_TYPE,
        headers=headers,
    )


def _html(request: web.Request, status: int, message: str) -> web.Response:
    """The site's error page; a bare one if the page itself cannot be made (a bad Host)."""
    from soda_reduce.web import pages  # the pages import the context: kept out of start-up

    try:
        return pages.render(request, "error.html", status, title="Error", message=message)
    except Exception as exc:
        log.debug("error page for %s fell back to plain HTML: %r", request.path, exc)
    title = f"{status} {html.escape(_reason(status))}"
    body = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title></head><body><h1>{title}</h1>"
        f"<p>{html.escape(message)}</p></body></html>\n"
    )
    return web.Response(status=status, text=body, content_type="text/html")


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
