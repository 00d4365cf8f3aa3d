"""Identities at the edge (issue 10, docs/uws.md Owners): the anonymous session cookie,
requests from other sites, the trusted header and bearer tokens."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterable
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from lxml import etree

from soda_reduce.runtime.store import Store
from soda_reduce.web.context import SERVICES
from soda_reduce.web.middleware import AuthConfig
from soda_reduce.web.sessions import COOKIE
from tests.support.callers import AUTH, callers, stored_jobs
from tests.support.uws_harness import UWS, Harness, uws_service


@pytest.fixture
async def svc(store: Store, demo_archive: Path, tmp_path: Path) -> AsyncIterator[Harness]:
    async with uws_service(store, demo_archive, tmp_path, auth=AUTH, worker=False) as harness:
        yield harness


async def test_session_cookie_is_random_hashed_and_scoped(svc: Harness) -> None:
    async with callers(svc) as who:
        reply = await who["session1"].call("POST", "/soda/async", data={"ID": svc.complete_id})
        assert reply.status == 303 and len(reply.set_cookies) == 1
        cookie = SimpleCookie(reply.set_cookies[0])[COOKIE]
        token = cookie.value
        assert len(token) >= 43 and token.replace("-", "").replace("_", "").isalnum()
        assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/"
        assert not cookie["secure"]  # plain http here
        assert int(cookie["max-age"]) == 30 * 86400  # the latest destruction a job may have
        (doc,) = await stored_jobs(svc)
        assert doc["owner"] == "anon:" + hashlib.sha256(token.encode()).hexdigest()
        assert token not in json.dumps(doc, default=str)  # never the token itself

        # authenticated callers get no session; a forged or malformed cookie is no session
        alice = await who["alice"].call("POST", "/soda/async", data={"ID": svc.complete_id})
        assert alice.status == 303 and not alice.set_cookies
        for forged in ("x", "A" * 43):
            faker = who["none"]
            cookie_header = {"Cookie": f"{COOKIE}={forged}"}
            reply = await faker.call("GET", "/soda/async", headers=cookie_header)
            assert etree.fromstring(reply.body).find("uws:jobref", UWS) is None
        reply = await who["none"].call(
            "POST", "/soda/async", data={"ID": svc.complete_id}, headers={"Cookie": f"{COOKIE}=x"}
        )
        fresh = SimpleCookie(reply.set_cookies[0])[COOKIE].value
        assert fresh not in ("x", token) and len(fresh) >= 43

        # behind a proxy with an https base URL: Secure, and the base URL's path
        services = svc.client.app[SERVICES]
        services.base_url = "https://archive.example.org/reduce"
        try:
            reply = await who["session2"].call(
                "POST",
                "/soda/async",
                data={"ID": svc.complete_id},
                headers={"Origin": "https://archive.example.org"},
            )
        finally:
            services.base_url = None
        assert reply.status == 303, reply.body
        cookie = SimpleCookie(reply.set_cookies[0])[COOKIE]
        assert cookie["secure"] and cookie["path"] == "/reduce"


# ----------------------------------------------------------------------------- cross-site


async def test_cross_site_changes_are_refused_programs_are_not(svc: Harness) -> None:
    async with callers(svc) as who:
        session = who["session1"]
        job_id = await session.create({"ID": svc.complete_id})  # no Origin: as pyvo, curl
        count = len(await stored_jobs(svc))
        foreign: Iterable[dict[str, str]] = (
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
            {"Origin": svc.base, "Sec-Fetch-Site": "cross-site"},
        )
        for headers in foreign:
            for caller in (session, who["none"], who["alice"]):
                reply = await caller.call(
                    "POST", "/soda/async", data={"ID": svc.complete_id}, headers=headers
                )
                assert reply.status == 403 and b'value="ERROR"' in reply.body, headers
                assert not reply.set_cookies
            reply = await session.call("DELETE", f"/soda/async/{job_id}", headers=headers)
            assert reply.status == 403
            reply = await session.call(
                "POST", "/jobs", data={"ID": svc.complete_id}, headers=headers
            )
            assert reply.status == 403 and reply.headers["Content-Type"].startswith("text/html")
            # another site may still link to, and read, what is public
            reply = await session.call("GET", f"/soda/async/{job_id}", headers=headers)
            assert reply.status == 200
        assert len(await stored_jobs(svc)) == count

        same = ({"Origin": svc.base}, {"Sec-Fetch-Site": "same-origin", "Origin": svc.base})
        for headers in same:
            await session.create({"ID": svc.complete_id}, headers=headers)
        assert len(await stored_jobs(svc)) == count + 2
        reply = await session.call(
            "DELETE", f"/soda/async/{job_id}", headers={"Sec-Fetch-Site": "same-origin"}
        )
        assert reply.status == 303


# ----------------------------------------------------------------------------- identities


async def test_trusted_header_once_and_bearer_token_first(svc: Harness, tmp_path: Path) -> None:
    async with callers(svc) as who:
        anyone = who["none"]
        twice = [("X-Remote-User", "alice"), ("X-Remote-User", "mallory")]
        for method, path in (("GET", "/soda/async"), ("POST", "/soda/async"), ("GET", "/jobs")):
            async with anyone.http.request(
                method, svc.base + path, headers=twice, allow_redirects=False
            ) as response:
                assert response.status == 400, path
        assert await stored_jobs(svc) == []

        # a valid bearer token wins over the header; an unknown one is refused, header or not
        both = {"Authorization": "Bearer tok-bob", "X-Remote-User": "alice"}
        job_id = await anyone.create({"ID": svc.complete_id}, headers=both)
        doc = etree.fromstring((await who["bob"].call("GET", f"/soda/async/{job_id}")).body)
        assert doc.findtext("uws:ownerId", namespaces=UWS) == "bob"
        alice = {"X-Remote-User": "alice"}
        assert (await anyone.call("GET", f"/soda/async/{job_id}", headers=alice)).status == 404
        wrong = {"Authorization": "Bearer nope", "X-Remote-User": "alice"}
        reply = await anyone.call("GET", "/soda/async", headers=wrong)
        assert reply.status == 401 and "invalid_token" in reply.headers["WWW-Authenticate"]
        twice_bearer = [("Authorization", "Bearer tok-bob"), ("Authorization", "Bearer tok-alice")]
        async with anyone.http.get(svc.base + "/soda/async", headers=twice_bearer) as response:
            assert response.status == 400

        # nobody may claim an anonymous session's owner, by header or tokens file
        claimed = {"X-Remote-User": "anon:" + "0" * 64}
        assert (await anyone.call("GET", "/soda/async", headers=claimed)).status == 400
    tokens = tmp_path / "tokens"
    tokens.write_text("secret anon:abc\n")
    with pytest.raises(ValueError, match="anonymous"):
        AuthConfig.load("X-Remote-User", tokens, True)
