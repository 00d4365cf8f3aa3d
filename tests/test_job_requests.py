"""One typed job request, parsed once at the edge, with limits on what a client sends.

Unit tests of `vo.job_request`, then the same limits through the HTTP service: the
right status (400, 413, 429) and a DALI error document naming the rule, and jobs
that stay readable afterwards (a NUL once made every later read of a job list 500).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from lxml import etree

from soda_reduce.config import Settings
from soda_reduce.runtime.quotas import RateLimiter
from soda_reduce.runtime.store import Store
from soda_reduce.vo.dali import UsageError
from soda_reduce.vo.job_request import (
    JobKind,
    JobRequest,
    RequestLimits,
    check_request_limits,
    id_resource,
    parse_job_request,
)
from soda_reduce.vo.uws import Phase
from soda_reduce.web.context import SERVICES
from tests.support.uws_harness import UWS, Harness, uws_service

CIRCLE = "10 20 0.5"


def test_typed_request_round_trips_through_its_document() -> None:
    pairs = [
        ("id", "ivo://x/raw?a.fits ivo://x/raw?b.fits"),
        ("Target", "science"),
        ("science.sigma", "3"),
        ("circle", "10 20 0.5"),
        ("POLYGON", "10 20 11 20 11 21"),
        ("BAND", "5e-7 6e-7"),
        ("time", "-Inf 60000"),
        ("POL", "I"),
        ("RUNID", "night 1"),
        ("EXECUTIONDURATION", "60"),
        ("phase", "RUN"),
        ("whatever", "kept"),
    ]
    request = parse_job_request(pairs)
    assert request.ids == ("ivo://x/raw?a.fits", "ivo://x/raw?b.fits")
    assert request.target == "science"
    assert request.recipe == (("science.sigma", "3"),)
    assert len(request.soda.regions) == 2 and request.soda.times[0].low == float("-inf")
    assert (request.run_id, request.execution_duration, request.phase) == (
        "night 1",
        60,
        Phase.QUEUED,
    )
    assert request.other == (("WHATEVER", "kept"),)
    again = JobRequest.from_doc(request.to_doc(), request.run_id)
    assert again.soda == request.soda
    assert (again.ids, again.target, again.recipe, again.other) == (
        request.ids,
        request.target,
        request.recipe,
        request.other,
    )
    # the UWS parameter list names what the request holds
    names = [n for n, _ in request.parameters()]
    assert names.count("ID") == 2 and "CIRCLE" in names and "POLYGON" in names


def test_updated_replaces_values_by_name_only() -> None:
    old = parse_job_request([("ID", "a"), ("BAND", "1 2"), ("science.sigma", "3")])
    change = parse_job_request([("band", "3 4"), ("RUNID", "r")])
    merged = old.updated(change, ["band", "RUNID"])
    assert merged.ids == ("a",) and merged.recipe == (("science.sigma", "3"),)
    assert [str(b) for b in merged.soda.bands] == ["3 4"] and merged.run_id == "r"


RAW_ID = "ivo://x/raw?a.fits"
PRODUCT_ID = f"ivo://x/product?{'a' * 64}/p.fits"


def test_the_kind_of_a_request_and_empty_values() -> None:
    """Raw IDs reduce (TARGET=raw: cut as archived), product IDs cut; empty values are
    absent, so the service's defaults apply to what a DataLink client left unset."""
    reduction = parse_job_request([("ID", RAW_ID), ("TARGET", ""), ("flat.combine", " ")])
    assert reduction.kind is JobKind.REDUCTION and reduction.target is None
    assert reduction.recipe == () and reduction.other == ()
    assert parse_job_request([("ID", RAW_ID), ("USE_DARK", "")]).other == ()
    raw = parse_job_request([("ID", RAW_ID), ("target", "RAW"), ("CIRCLE", CIRCLE)])
    assert raw.kind is JobKind.RAW_CUTOUT and raw.kind.cuts_only
    product = parse_job_request([("ID", PRODUCT_ID), ("TARGET", "")])
    assert product.kind is JobKind.PRODUCT_CUTOUT and product.target is None
    assert JobRequest.from_doc(product.to_doc()).kind is JobKind.PRODUCT_CUTOUT
    assert product.to_doc()["kind"] == "product_cutout"
    assert id_resource(PRODUCT_ID) == "product" and id_resource("ivo://x/other?y") is None
    for pairs, words in (
        ([("ID", PRODUCT_ID), ("TARGET", "science")], "TARGET applies to raw IDs only"),
        ([("ID", PRODUCT_ID), ("TARGET", "raw")], "TARGET applies to raw IDs only"),
        ([("ID", PRODUCT_ID), ("flat.combine", "average")], "with products"),
        ([("ID", RAW_ID), ("TARGET", "raw"), ("flat.combine", "x")], "raw frames as archived"),
        ([("ID", f"{RAW_ID} {PRODUCT_ID}")], "product IDs and raw IDs"),
    ):
        with pytest.raises(UsageError, match=words):
            parse_job_request(pairs)
    # a merge of parameters is checked the same way; a name given empty goes back to its
    # default
    old = parse_job_request([("ID", RAW_ID), ("flat.combine", "average"), ("TARGET", "flat")])
    cleared = old.updated(parse_job_request([("flat.combine", "")]), ["flat.combine"])
    assert cleared.recipe == ()
    with pytest.raises(UsageError, match="with products"):
        check_request_limits(
            parse_job_request([("ID", RAW_ID), ("flat.combine", "average")]).updated(
                parse_job_request([("ID", PRODUCT_ID)]), ["ID"]
            ),
            RequestLimits(),
        )


@pytest.mark.parametrize(
    ("pairs", "words"),
    [
        ([("RUNID", "a\x00b")], "U+0000"),
        ([("ID", "x\x1b[31m")], "U+001B"),
        ([("TARGET", "sci\u0085ence")], "U+0085"),
        ([("na\x00me", "v")], "not allowed"),
        ([("x" * 65, "v")], "not allowed"),
        ([("ID", "a" * 5000)], "limit of 4096"),
        ([("RUNID", "r" * 65)], "RUNID"),
        ([(f"P{n}", "v") for n in range(201)], "200 parameters"),
        ([("ID", " ".join(f"id{n}" for n in range(101)))], "at most 100"),
        ([("CIRCLE", "10 20 0.5")] * 21, "at most 20"),
        ([("POLYGON", " ".join(f"{n % 90} {n % 80}" for n in range(101)))], "numbers"),
        ([("ID", "a"), ("PHASE", "RUN"), ("PHASE", "RUN")], "PHASE given 2 times"),
        ([("DESTRUCTION", "0001-01-01T00:00:00+14:00")], "in range"),
        ([("EXECUTIONDURATION", "9" * 30)], "non-negative integer"),
    ],
)
def test_malformed_or_oversized_requests_are_refused(
    pairs: list[tuple[str, str]], words: str
) -> None:
    with pytest.raises(UsageError, match=words.replace("+", r"\+").replace("[", r"\[")):
        parse_job_request(pairs)


def test_cutout_combinations_are_counted_and_capped() -> None:
    limits = RequestLimits(max_cutout_combinations=100)
    axes = [("CIRCLE", f"10 20 {0.1 + n / 100}") for n in range(5)]
    axes += [("BAND", f"{n}e-7 {n + 1}e-7") for n in range(1, 5)]
    axes += [("TIME", f"{60000 + n} {60001 + n}") for n in range(5)]
    assert parse_job_request([("ID", "a"), *axes], limits).cutout_combinations() == 100
    with pytest.raises(UsageError, match=r"200 cutouts requested.*limit is 100"):
        parse_job_request([("ID", "a b"), *axes], limits)
    # the 1.5 KB request: 20 x 20 x 20 = 8,000 cutouts
    many = [("CIRCLE", f"10 20 {0.1 + n / 100}") for n in range(20)]
    many += [("BAND", f"{n}e-7 {n + 1}e-7") for n in range(1, 21)]
    many += [("TIME", f"{60000 + n} {60001 + n}") for n in range(20)]
    with pytest.raises(UsageError, match="8000 cutouts"):
        parse_job_request([("ID", "a"), *many], limits)


def test_polygon_validation_is_bounded_in_time() -> None:
    """20 polygons at the vertex limit validate quickly (2,000 vertices took 3 s)."""
    import math

    ring = " ".join(
        f"{10 + math.cos(2 * math.pi * k / 100):.6f} {20 + math.sin(2 * math.pi * k / 100):.6f}"
        for k in range(100)
    )
    started = time.perf_counter()
    request = parse_job_request([("ID", "a"), *([("POLYGON", ring)] * 20)])
    assert len(request.soda.regions) == 1  # the same polygon once
    assert time.perf_counter() - started < 5  # generous: a hang, not a timing, is the bug


def test_rate_limiter_buckets_refill_and_are_forgotten() -> None:
    limiter = RateLimiter(per_minute=60, burst=2, max_callers=3)
    assert limiter.take(("a",), now=0) == 0 and limiter.take(("a",), now=0) == 0
    wait = limiter.take(("a",), now=0)
    assert 0.9 < wait <= 1.0 and limiter.retry_after(wait) == 1
    assert limiter.take(("a",), now=1.0) == 0  # one token back after a second
    for n in range(10):
        limiter.take((f"caller{n}",), now=2.0)
    assert len(limiter._buckets) <= 3


# ------------------------------------------------------------------ through the service


@pytest.fixture
async def svc(store: Store, demo_archive: Path, tmp_path: Path):
    settings = Settings(
        data_dir=tmp_path,
        archive_dir=demo_archive,
        sweep_s=0.5,
        max_active_jobs=3,
        job_rate_per_minute=600,
        job_rate_burst=5,
    )
    async with uws_service(store, demo_archive, tmp_path, settings=settings) as harness:
        yield harness


async def _error(svc: Harness, response) -> str:
    body = await response.read()
    doc = etree.fromstring(body)
    (info,) = doc.xpath("//*[local-name()='INFO'][@name='QUERY_STATUS']")
    assert info.get("value") == "ERROR"
    return info.text or ""


async def test_bad_characters_are_refused_and_lists_stay_readable(svc: Harness) -> None:
    for data in ({"ID": svc.complete_id, "RUNID": "a\x00b"}, {"ID": "x\x01", "TARGET": "bias"}):
        response = await svc.client.post("/soda/async", data=data, allow_redirects=False)
        assert response.status == 400
        assert "not allowed" in await _error(svc, response)
    listing = await svc.client.get("/soda/async")
    assert listing.status == 200


async def test_oversized_bodies_are_413_in_each_routes_format(svc: Harness) -> None:
    big = {"ID": svc.complete_id, "RUNID": "x", "junk": "v" * (300 * 1024)}
    response = await svc.client.post("/soda/async", data=big, allow_redirects=False)
    assert response.status == 413
    assert "larger than" in await _error(svc, response)
    response = await svc.client.post("/soda/sync", data=big)
    assert response.status == 413
    assert response.content_type == "text/plain"  # SODA's error documents are text
    assert (await response.text()).startswith("UsageError:")


async def test_combination_cap_through_the_service(svc: Harness) -> None:
    data = [("ID", svc.complete_id)]
    data += [("CIRCLE", f"10 20 {0.1 + n / 100}") for n in range(11)]
    data += [("BAND", f"{n}e-7 {n + 1}e-7") for n in range(1, 11)]
    response = await svc.client.post("/soda/async", data=data, allow_redirects=False)
    assert response.status == 400
    assert "110 cutouts requested" in await _error(svc, response)


async def test_active_jobs_and_creation_rate_answer_429(svc: Harness) -> None:
    for _ in range(3):
        await svc.create({"ID": svc.complete_id, "TARGET": "bias"})
    response = await svc.client.post(
        "/soda/async", data={"ID": svc.complete_id}, allow_redirects=False
    )
    assert response.status == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert "still pending or running" in await _error(svc, response)
    # the rate: a burst of 5 attempts, then refused
    services = svc.client.app[SERVICES]
    services.jobs.limits = type(services.jobs.limits)(max_active_jobs=1000)
    statuses = []
    for _ in range(4):
        response = await svc.client.post(
            "/soda/async", data={"ID": svc.complete_id}, allow_redirects=False
        )
        statuses.append(response.status)
    # every attempt counts, the one refused by the quota too: 4 of 5 were taken
    assert statuses == [303, 429, 429, 429], statuses
    assert "too many jobs" in await _error(svc, response)


async def test_status_cache_has_no_client_chosen_key_and_checks_host(svc: Harness) -> None:
    job_id = await svc.create({"ID": svc.complete_id})
    cache = svc.client.app[SERVICES].status_cache
    for n in range(30):
        response = await svc.client.get(
            f"/soda/async/{job_id}", headers={"Host": f"host{n}.example:8080"}
        )
        assert response.status == 200
        body = await response.text()
        assert f"http://host{n}.example:8080/soda/async/{job_id}" in body or "<uws:job" in body
    assert len(cache) == 1
    response = await svc.client.get(f"/soda/async/{job_id}", headers={"Host": "a<b>"})
    assert response.status == 400


async def test_job_list_bounds_and_dates(svc: Harness) -> None:
    await svc.create({"ID": svc.complete_id})
    response = await svc.client.get("/soda/async", params={"LAST": str(10**25)})
    assert response.status == 400
    for last in (2**62, 2**63 + 5):  # beyond a page: one page
        response = await svc.client.get("/soda/async", params={"LAST": str(last)})
        assert response.status == 200
    response = await svc.client.get("/soda/async", params={"AFTER": "0001-01-01T00:00:00+14:00"})
    assert response.status == 400
    doc = etree.fromstring(await (await svc.client.get("/soda/async?LAST=1")).read())
    assert len(doc.xpath("//uws:jobref", namespaces=UWS)) == 1


async def test_wait_ends_by_the_cap_and_parameters_stay_typed(svc: Harness) -> None:
    job_id = await svc.create({"ID": svc.complete_id, "CIRCLE": CIRCLE, "RUNID": "r1"})
    services = svc.client.app[SERVICES]
    services.wait_cap_s = 1.0
    started = time.monotonic()
    await svc.job(job_id, "?WAIT=30")
    assert time.monotonic() - started < 3.0
    stored = await services.jobs.jobs.get(job_id, any_owner=True)  # an anonymous session's
    assert stored is not None and stored.doc["request"]["regions"] == [{"circle": [10, 20, 0.5]}]
    response = await svc.client.post(
        f"/soda/async/{job_id}/parameters", data={"band": "5e-7 6e-7"}, allow_redirects=False
    )
    assert response.status == 303
    stored = await services.jobs.jobs.get(job_id, any_owner=True)  # an anonymous session's
    assert stored is not None
    assert stored.request.soda.bands[0].low == 5e-7 and stored.run_id == "r1"
    assert len(stored.request.soda.regions) == 1
    await asyncio.sleep(0)


async def test_run_again_republishes_a_job_whose_message_was_lost(
    store: Store, demo_archive: Path, tmp_path: Path
) -> None:
    """No worker takes the job (its message is gone): RUN again publishes it once more,
    once per period however many times it is asked."""
    async with uws_service(store, demo_archive, tmp_path, worker=False) as svc:
        service = svc.runtime.service
        sent: list[str] = []
        publish = service.queue.publish

        async def counting(job_id: str, body: dict) -> None:
            sent.append(job_id)
            await publish(job_id, body)

        service.queue.publish = counting  # type: ignore[method-assign]
        job_id = await svc.create({"ID": svc.complete_id, "PHASE": "RUN"})
        assert sent == [job_id]
        run = {"PHASE": "RUN"}
        response = await svc.client.post(f"/soda/async/{job_id}/phase", data=run)
        assert response.status == 200 and sent == [job_id]  # just queued: nothing lost yet
        old = datetime.now(UTC) - timedelta(minutes=5)
        await store.jobs.update_one({"job_id": job_id}, {"$set": {"published_time": old}})
        for _ in range(3):
            response = await svc.client.post(f"/soda/async/{job_id}/phase", data=run)
            assert response.status == 200
        assert sent == [job_id, job_id]
        stored = await service.jobs.get(job_id, any_owner=True)
        assert stored is not None and stored.phase == Phase.QUEUED
        assert stored.doc["requeues"] == 1


async def test_job_lists_read_windows_of_creation_time_and_page_with_after(
    store: Store,
) -> None:
    """Newest first with LAST, oldest first with AFTER paging, across jobs minutes to
    months old, other owners' and ARCHIVED jobs left out."""
    from soda_reduce.runtime.jobs import JobStore, new_job_id

    jobs = JobStore(store)
    now = datetime.now(UTC).replace(microsecond=0)
    ages = [timedelta(seconds=s) for s in (5, 50, 400, 4000, 40_000, 400_000, 4_000_000)]
    ages += [timedelta(days=100), timedelta(days=360)]  # MAX_JOB_AGE is 365 days
    docs = []
    for n, age in enumerate(ages):
        for owner in ("me", "other"):
            docs.append(
                {
                    "job_id": new_job_id(),
                    "owner": owner,
                    "phase": "ARCHIVED" if n == 3 else ("PENDING" if n % 2 else "COMPLETED"),
                    "creation_time": now - age,
                    "parameters": [],
                }
            )
    await store.jobs.insert_many(docs)
    mine = sorted(
        (d for d in docs if d["owner"] == "me" and d["phase"] != "ARCHIVED"),
        key=lambda d: d["creation_time"],
    )
    newest = await jobs.list("me", last=3)
    assert [r["job_id"] for r in newest] == [d["job_id"] for d in mine[::-1][:3]]
    everything = await jobs.list("me", last=1000)
    assert [r["job_id"] for r in everything] == [d["job_id"] for d in mine[::-1]]
    pending = await jobs.list("me", phases=[Phase.PENDING], last=100)
    assert {r["job_id"] for r in pending} == {d["job_id"] for d in mine if d["phase"] == "PENDING"}
    archived = await jobs.list("me", phases=[Phase.ARCHIVED])
    assert len(archived) == 1
    # oldest first, paged with AFTER = the last row's creation time
    seen: list[str] = []
    after = None
    for _ in range(10):
        page = await jobs.list("me", after=after)
        if not page:
            break
        seen.append(page[0]["job_id"])
        after = page[0]["creation_time"]
        page = page[:1]
    assert seen == [d["job_id"] for d in mine]
    assert await jobs.list("nobody", last=10) == []


async def test_oldest_first_lists_start_at_the_owners_first_creation(store: Store) -> None:
    """JobStore.create keeps each owner's first creation time: an oldest-first page
    starts there, not a year back (so it reads a small window, not every job)."""
    from soda_reduce.runtime.jobs import JobStore

    jobs = JobStore(store)
    created = []
    for n in range(5):
        job = await jobs.create(
            "me",
            parse_job_request([("ID", f"x{n}")]),
            execution_duration=60,
            destruction=datetime.now(UTC) + timedelta(days=1),
        )
        created.append(job.job_id)
        await asyncio.sleep(0.003)  # creation times are kept to the millisecond
    first = await jobs.lists.first_creation("me")
    assert first is not None and abs((datetime.now(UTC) - first).total_seconds()) < 60
    assert await jobs.lists.first_creation("other") is None
    assert [r["job_id"] for r in await jobs.list("me")] == created
    assert [r["job_id"] for r in await jobs.list("me", last=2)] == created[::-1][:2]
    assert await jobs.list("other") == []
