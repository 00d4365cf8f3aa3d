"""Who sees and who changes which job, on every job route (issue 10, docs/uws.md Owners).

Callers are real HTTP clients of the whole service (tests/support/callers.py): two
bearer-token owners, two anonymous sessions with their own cookie jars, and a client that
keeps no cookies. Rules under test:

- lists (UWS and HTML) show the caller's own jobs only; a client without a session has none;
- an authenticated owner's job is a 404 to everyone else, on every route;
- an anonymous job's URL lets anyone read it (every read route, the same document as its
  owner gets); changing it needs its session (403) once the session came back to the job,
  while a client that keeps no cookies keeps its job URL as the key;
- ``SODA_REDUCE_ANONYMOUS=false``: 401 on every job route, the HTML form included;
- pyvo: two ``requests.Session`` clients each list their own jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import requests
from astropy.io import fits
from astropy.wcs import WCS
from lxml import etree

from soda_reduce.runtime.store import Store
from soda_reduce.web.middleware import AuthConfig
from soda_reduce.web.sessions import COOKIE
from tests.support.callers import (
    AUTH,
    PAGE_READS,
    TOKENS,
    UWS_READS,
    Caller,
    callers,
    changes,
    stored_jobs,
)
from tests.support.uws_harness import UWS, Harness, uws_service

FINAL = ("COMPLETED", "ERROR", "ABORTED")
ANONYMOUS = ("session1", "session2")
CREATORS = ("alice", "bob", *ANONYMOUS)


@pytest.fixture
async def svc(store: Store, demo_archive: Path, tmp_path: Path) -> AsyncIterator[Harness]:
    async with uws_service(store, demo_archive, tmp_path, auth=AUTH) as harness:
        yield harness


async def _final(caller: Caller, job_id: str, limit_s: float = 120) -> str:
    for _ in range(int(limit_s / 10) + 1):
        reply = await caller.call("GET", f"/soda/async/{job_id}?WAIT=10")
        phase = etree.fromstring(reply.body).findtext("uws:phase", namespaces=UWS)
        if phase in FINAL:
            return phase
    raise AssertionError(f"job {job_id} not final after {limit_s} s")


def _may_read(caller: str, owner: str) -> bool:
    return caller == owner or owner in ANONYMOUS


def _result_path(document: bytes, job_id: str, result_id: str) -> str:
    """The path below the job of one of its results, from the job document."""
    xpath = f"uws:results/uws:result[@id='{result_id}']/@xlink:href"
    (href,) = etree.fromstring(document).xpath(xpath, namespaces=UWS)
    return href.split(f"/soda/async/{job_id}", 1)[1]


def _public(owner: str) -> str | None:
    return None if owner in ANONYMOUS else owner


def _owner_ids(document: bytes) -> list[str | None]:
    """Every ownerId of a job or job list: its text, None when xsi:nil."""
    nil = "{http://www.w3.org/2001/XMLSchema-instance}nil"
    found = etree.fromstring(document).iter("{http://www.ivoa.net/xml/UWS/v1.0}ownerId")
    return [None if e.get(nil) == "true" else e.text for e in found]


# ----------------------------------------------------------------------------- reads


async def test_lists_show_own_jobs_and_anonymous_job_urls_are_read_capabilities(
    svc: Harness,
) -> None:
    async with callers(svc) as who:
        # with a SODA cutout: its result file is one more read route of the job
        raw = svc.archive / svc.complete_id.split("?", 1)[1]
        ra, dec = WCS(fits.getheader(raw)).pixel_to_world_values(20.0, 30.0)
        request = {"ID": svc.complete_id, "PHASE": "RUN", "CIRCLE": f"{ra} {dec} {4 / 3600}"}
        jobs = {name: await who[name].create(request) for name in CREATORS}
        for name, job_id in jobs.items():
            assert await _final(who[name], job_id) == "COMPLETED"
        # one session, two jobs: both listed to it
        second = await who["session1"].create({"ID": svc.complete_id, "RUNID": "again"})

        for name, caller in who.items():
            own = {j for owner, j in jobs.items() if owner == name}
            if name == "session1":
                own.add(second)
            assert await caller.listed() == own, name
            page = (await caller.call("GET", "/jobs")).body.decode()
            assert {j for j in (*jobs.values(), second) if f'href="/jobs/{j}"' in page} == own

        for owner, job_id in jobs.items():
            # what the owner gets on every read route, then what everyone else gets
            document = (await who[owner].call("GET", f"/soda/async/{job_id}")).body
            cutout = _result_path(document, job_id, "cutout-1")
            expected = {
                path: await who[owner].call("GET", f"/soda/async/{job_id}{path}")
                for path in (*UWS_READS, cutout)
            }
            pages = {
                path: await who[owner].call("GET", f"/jobs/{job_id}{path}") for path in PAGE_READS
            }
            assert [r.status for r in expected.values()] == [*[200] * 5, 404, *[200] * 6], owner
            assert expected[cutout].headers["Content-Type"] == "application/fits"
            assert {p: r.status for p, r in pages.items()} == dict.fromkeys(PAGE_READS, 200)
            for name, caller in who.items():
                readable = _may_read(name, owner)
                for path, mine in expected.items():
                    reply = await caller.call("GET", f"/soda/async/{job_id}{path}")
                    assert reply.status == (mine.status if readable else 404), (name, path)
                    if readable and path in ("", "/parameters", "/results", "/owner"):
                        assert reply.body == mine.body, (name, path)
                for path in pages:
                    reply = await caller.call("GET", f"/jobs/{job_id}{path}")
                    assert reply.status == (200 if readable else 404), (name, path)
                    if readable and path == "":
                        # the buttons are the owner's only
                        assert ('id="delete"' in reply.body.decode()) == (name == owner)

            # UWS: ownerId nil for anonymous jobs (a session's hash is nobody's name)
            assert _owner_ids(expected[""].body) == [_public(owner)]
            assert expected["/owner"].body == (_public(owner) or "").encode()
        for name in CREATORS:
            listing = (await who[name].call("GET", "/soda/async")).body
            assert set(_owner_ids(listing)) == {_public(name)}, name


# ----------------------------------------------------------------------------- changes


async def test_only_the_owner_changes_a_job(svc: Harness) -> None:
    async with callers(svc) as who:
        jobs = {}
        for name in CREATORS:
            jobs[name] = await who[name].create({"ID": svc.complete_id, "RUNID": "original"})
            # the client comes back to its job (pyvo and browsers follow the 303 at once):
            # from then on the job is its session's alone
            assert (await who[name].call("GET", f"/soda/async/{jobs[name]}")).status == 200
        before = {d["job_id"]: d for d in await stored_jobs(svc)}
        for owner, job_id in jobs.items():
            for name, caller in who.items():
                if name == owner:
                    continue
                for method, path, data in changes(job_id):
                    reply = await caller.call(method, path, data=data)
                    # someone else's anonymous job: seen (by URL) but not changed
                    assert reply.status == (403 if owner in ANONYMOUS else 404), (name, path)
                    assert b'value="ERROR"' in reply.body
        assert {d["job_id"]: d for d in await stored_jobs(svc)} == before

        for owner, job_id in jobs.items():
            caller, job = who[owner], f"/soda/async/{job_id}"
            reply = await caller.call("POST", f"{job}/parameters", data={"RUNID": "mine"})
            assert reply.status == 303
            doc = etree.fromstring((await caller.call("GET", job)).body)
            assert doc.findtext("uws:runId", namespaces=UWS) == "mine"
            reply = await caller.call("POST", f"{job}/phase", data={"PHASE": "ABORT"})
            assert reply.status == 303
            assert (await caller.call("GET", f"{job}/phase")).body == b"ABORTED"
            assert (await caller.call("DELETE", job)).status == 303
            assert (await caller.call("GET", job)).status == 404
        assert await stored_jobs(svc) == []


async def test_a_client_without_cookies_keeps_its_job_url_as_key(svc: Harness) -> None:
    """STILTS, TOPCAT, curl, ``requests.post`` then a new pyvo job object: no cookie jar.

    Their session never comes back, so the job URL stays the key to change the job, as
    UWS clients expect; a client that keeps cookies gets its jobs to itself.
    """
    async with callers(svc) as who:
        nobody, stranger = who["none"], who["session2"]
        first = await nobody.create({"ID": svc.complete_id, "RUNID": "original"})
        second = await nobody.create({"ID": svc.complete_id})
        assert await nobody.listed() == set()  # no session: its jobs are in no list
        job = f"/soda/async/{first}"
        for caller in (nobody, stranger):
            reply = await caller.call("POST", f"{job}/parameters", data={"RUNID": caller.name})
            assert reply.status == 303
        assert (await nobody.call("POST", f"{job}/phase", data={"PHASE": "ABORT"})).status == 303
        assert (await nobody.call("DELETE", job)).status == 303
        assert (await stranger.call("DELETE", f"/soda/async/{second}")).status == 303
        assert await stored_jobs(svc) == []

        # the same client with a cookie jar: its first return binds the job to its session
        keeper = who["session1"]
        job_id = await keeper.create({"ID": svc.complete_id})
        reply = await stranger.call("POST", f"/soda/async/{job_id}/parameters", data={"A": "1"})
        assert reply.status == 303  # before the session came back: the URL was still the key
        assert (await keeper.call("GET", f"/soda/async/{job_id}/phase")).body == b"PENDING"
        reply = await stranger.call("POST", f"/soda/async/{job_id}/parameters", data={"A": "2"})
        assert reply.status == 403
        assert (await keeper.call("DELETE", f"/soda/async/{job_id}")).status == 303


# ----------------------------------------------------------------------------- ANONYMOUS=false


@pytest.fixture
async def closed(store: Store, demo_archive: Path, tmp_path: Path) -> AsyncIterator[Harness]:
    auth = AuthConfig(tokens=TOKENS, allow_anonymous=False)
    async with uws_service(store, demo_archive, tmp_path, auth=auth, worker=False) as harness:
        yield harness


async def test_no_anonymous_means_401_on_every_job_route(closed: Harness) -> None:
    async with callers(closed) as who:
        job_id = await who["alice"].create({"ID": closed.complete_id})
        job = f"/soda/async/{job_id}"
        routes = [
            ("GET", "/soda/async", None),
            ("POST", "/soda/async", {"ID": closed.complete_id, "PHASE": "RUN"}),
            *[("GET", f"{job}{path}", None) for path in (*UWS_READS, "/results/cutout-1-x.fits")],
            *changes(job_id),
            ("GET", "/jobs", None),
            ("POST", "/jobs", {"ID": closed.complete_id}),
            *[("GET", f"/jobs/{job_id}{path}", None) for path in PAGE_READS],
        ]
        forged = {"Cookie": f"{COOKIE}={'A' * 43}"}
        for caller, headers in ((who["none"], {}), (who["session1"], forged)):
            for method, path, data in routes:
                reply = await caller.call(method, path, data=data, headers=headers)
                assert reply.status == 401, (method, path)
                assert reply.headers["WWW-Authenticate"] == "Bearer"
                html = path.startswith("/jobs")
                assert reply.headers["Content-Type"].startswith(
                    "text/html" if html else "application/x-votable+xml"
                )
                assert not reply.set_cookies
        assert [d["owner"] for d in await stored_jobs(closed)] == ["alice"]
        assert (await who["alice"].call("GET", job)).status == 200
        assert await who["alice"].listed() == {job_id}
        # what is public anyway stays public
        for path in ("/capabilities", "/archive/raw?MAXREC=1", "/static/style.css"):
            assert (await who["none"].call("GET", path)).status == 200, path
        reply = await who["none"].call("GET", "/soda/sync")
        assert reply.status == 400 and reply.body.startswith(b"UsageError")


# ----------------------------------------------------------------------------- pyvo


def _pyvo_sessions(base: str, raw_id: str) -> None:
    """Two pyvo clients, each with its own requests.Session (which keeps the cookie)."""
    from pyvo.dal import AsyncTAPJob, DALServiceError, TAPService

    sessions = [requests.Session(), requests.Session()]
    for session in sessions:
        session.trust_env = False  # loopback only, whatever the environment says
    try:
        jobs = [
            AsyncTAPJob.create(f"{base}/soda", "", ID=raw_id, session=session)
            for session in sessions
        ]
        for session, job in zip(sessions, jobs, strict=True):
            listed = TAPService(f"{base}/soda", session=session).get_job_list()
            assert [j.jobid for j in listed] == [job.job_id]
        # the second client holds the first one's URL: it may read it, not delete it
        stranger = AsyncTAPJob(jobs[0].url, session=sessions[1])
        assert stranger.phase == "PENDING"
        with pytest.raises(DALServiceError):
            stranger.delete()
        with pytest.raises(DALServiceError):
            stranger.run()
        assert jobs[0].phase == "PENDING"
        for job in jobs:
            job.delete()
        for session in sessions:
            assert TAPService(f"{base}/soda", session=session).get_job_list() == []
    finally:
        for session in sessions:
            session.close()


async def test_two_pyvo_sessions_each_list_their_own_jobs(svc: Harness) -> None:
    await asyncio.wait_for(asyncio.to_thread(_pyvo_sessions, svc.base, svc.complete_id), 120)
