"""HTTP clients for the isolation tests: each caller has its own cookie jar, or none.

``callers`` gives alice and bob (bearer tokens of ``AUTH``), two anonymous sessions whose
jars keep the session cookie as a browser or a ``requests.Session`` does, and ``none``, a
client that keeps no cookies (as STILTS or curl).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from lxml import etree

from soda_reduce.web.middleware import AuthConfig
from tests.support.uws_harness import UWS, Harness

TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}
AUTH = AuthConfig(trusted_header="X-Remote-User", tokens=TOKENS)
# every GET route of one job, but its cutout results (their names come from the job)
UWS_READS = (
    "",
    "/phase",
    "/parameters",
    "/results",
    "/results/result",
    "/error",
    "/owner",
    "/quote",
    "/executionduration",
    "/destruction",
    "/bundles/reduced.zip",
)
PAGE_READS = ("", "/panel", "/status.json")  # below /jobs/{id}


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]
    set_cookies: list[str] = field(default_factory=list)


@dataclass
class Caller:
    """One client: its own cookie jar (or none) and its own headers."""

    name: str
    http: aiohttp.ClientSession
    base: str
    headers: dict[str, str] = field(default_factory=dict)

    async def call(self, method: str, path: str, **kw: Any) -> Reply:
        headers = {**self.headers, **kw.pop("headers", {})}
        async with self.http.request(
            method, self.base + path, headers=headers, allow_redirects=False, **kw
        ) as response:
            body = await response.read()
            return Reply(
                response.status,
                body,
                dict(response.headers),
                response.headers.getall("Set-Cookie", []),
            )

    async def create(self, data: Any, **kw: Any) -> str:
        reply = await self.call("POST", "/soda/async", data=data, **kw)
        assert reply.status == 303, reply.body
        return reply.headers["Location"].rsplit("/", 1)[1]

    async def listed(self) -> set[str]:
        reply = await self.call("GET", "/soda/async")
        assert reply.status == 200, reply.body
        return {ref.get("id") for ref in etree.fromstring(reply.body).iterfind("uws:jobref", UWS)}


@asynccontextmanager
async def callers(svc: Harness) -> AsyncIterator[dict[str, Caller]]:
    """alice and bob by bearer token, two anonymous sessions, and ``none``: no cookies."""
    jars: dict[str, aiohttp.abc.AbstractCookieJar] = {
        "alice": aiohttp.DummyCookieJar(),
        "bob": aiohttp.DummyCookieJar(),
        "session1": aiohttp.CookieJar(unsafe=True),  # unsafe: accept cookies of 127.0.0.1
        "session2": aiohttp.CookieJar(unsafe=True),
        "none": aiohttp.DummyCookieJar(),
    }
    headers = {
        "alice": {"Authorization": "Bearer tok-alice"},
        "bob": {"Authorization": "Bearer tok-bob"},
    }
    sessions = {name: aiohttp.ClientSession(cookie_jar=jar) for name, jar in jars.items()}
    try:
        yield {name: Caller(name, sessions[name], svc.base, headers.get(name, {})) for name in jars}
    finally:
        for session in sessions.values():
            await session.close()


def changes(job_id: str) -> list[tuple[str, str, dict[str, str] | None]]:
    """Every request that changes a job, with data the owner would be allowed to send."""
    job = f"/soda/async/{job_id}"
    return [
        ("POST", f"{job}/parameters", {"RUNID": "hijacked"}),
        ("POST", job, {"RUNID": "hijacked"}),
        ("POST", f"{job}/phase", {"PHASE": "RUN"}),
        ("POST", f"{job}/phase", {"PHASE": "ABORT"}),
        ("POST", f"{job}/executionduration", {"EXECUTIONDURATION": "60"}),
        ("POST", f"{job}/destruction", {"DESTRUCTION": "2030-01-01T00:00:00Z"}),
        ("POST", job, {"ACTION": "DELETE"}),
        ("DELETE", job, None),
    ]


async def stored_jobs(svc: Harness) -> list[dict[str, Any]]:
    return await svc.runtime.store.jobs.find({}, {"_id": 0}).to_list()
