"""The store's refusals as typed errors, on the real store: duplicates, documents too large,
anything else; and the worker's product registration telling "already registered" (fine)
from a real refusal (the job ends in ERROR, typed).

Outages (`StoreUnavailable`) are tested with a killed server in tests/test_store_supervision.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from soda_reduce.runtime.product_records import ProductRecords
from soda_reduce.runtime.store import Store
from soda_reduce.runtime.store.errors import (
    DocumentTooLarge,
    DuplicateKey,
    StoreError,
    StoreUnavailable,
    retrying,
    store_errors,
)
from soda_reduce.vo.dali import DaliError
from tests.support.uws_harness import UWS, uws_service

BIG = "v" * (17 * 1024 * 1024)  # beyond the 16 MiB of a document


async def test_refusals_are_typed_and_say_nothing_of_the_driver(store: Store) -> None:
    steps = store.steps
    await steps.insert_one({"step_key": "k"})
    with pytest.raises(DuplicateKey) as duplicate:
        await retrying(lambda: steps.insert_one({"step_key": "k"}))
    assert duplicate.value.http_status == 500 and "step_key" not in duplicate.value.message
    with pytest.raises(DocumentTooLarge):
        await retrying(lambda: steps.insert_one({"step_key": "big", "x": BIG}))  # the driver's
    await steps.insert_one({"step_key": "grows", "x": BIG[: 9 * 1024 * 1024]})
    with pytest.raises(DocumentTooLarge):  # the server's (10334)
        await retrying(
            lambda: steps.update_one({"step_key": "grows"}, {"$set": {"y": BIG[: 9 * 1024**2]}})
        )
    await store.db.command("collMod", "steps", validator={"never": {"$exists": True}})
    with pytest.raises(StoreError) as refused, store_errors():
        await steps.insert_one({"step_key": "other"})
    assert type(refused.value) is StoreError and not isinstance(refused.value, StoreUnavailable)
    assert refused.value.message == "the store refused the operation"
    assert isinstance(refused.value, DaliError)  # rendered by the error middleware, never raw


async def test_bulk_refusals_name_their_documents(store: Store) -> None:
    steps = store.steps
    await steps.insert_one({"step_key": "a"})
    docs = [{"step_key": "a"}, {"step_key": "b", "x": BIG}, {"step_key": "c"}]
    with pytest.raises(StoreError) as mixed:
        await retrying(lambda: steps.insert_many(docs, ordered=False))
    assert type(mixed.value) is StoreError  # a duplicate and a document too large
    assert {n: type(e) for n, e in mixed.value.refused.items()} == {
        0: DuplicateKey,
        1: DocumentTooLarge,
    }
    assert await steps.count_documents({"step_key": "c"}) == 1  # the others were written
    with pytest.raises(DuplicateKey) as duplicates:
        await retrying(lambda: steps.insert_many([{"step_key": "a"}, {"step_key": "d"}]))
    assert duplicates.value.duplicates == (0,)


async def test_registering_products_twice_is_fine_and_a_refusal_is_raised(store: Store) -> None:
    records = ProductRecords(store)
    docs = [{"product_id": f"k/{n}.fits", "step_key": "k", "file": f"{n}.fits"} for n in range(3)]
    assert await records.register(docs) == 3
    assert await records.register(docs) == 0  # already registered by an earlier job
    assert await records.register([*docs, {**docs[0], "product_id": "k/new.fits"}]) == 1
    assert (await records.get("k/0.fits") or {}).get("file") == "0.fits"
    await store.db.command("collMod", "products", validator={"never": {"$exists": True}})
    with pytest.raises(StoreError) as refused:
        await records.register([{"product_id": "k/x.fits", "step_key": "k"}])
    assert not isinstance(refused.value, DuplicateKey)
    assert await records.forget_step("k") == 4


async def test_a_job_whose_products_are_refused_ends_in_error(
    store: Store, demo_archive: Path, tmp_path: Path
) -> None:
    """The worker's registration used to swallow every exception: the job COMPLETED with
    products nobody could find. Now a refusal is the job's typed error."""
    async with uws_service(store, demo_archive, tmp_path) as svc:
        await store.db.command("collMod", "products", validator={"never": {"$exists": True}})
        job_id = await svc.create({"ID": svc.complete_id, "PHASE": "RUN"})
        doc = await svc.wait_final(job_id)
        assert doc.findtext("uws:phase", namespaces=UWS) == "ERROR"
        message = doc.findtext("uws:errorSummary/uws:message", namespaces=UWS) or ""
        assert message == "products not registered: the store refused the operation", message
        job = await svc.runtime.service.jobs.get(job_id, any_owner=True)
        assert job is not None and job.error is not None and job.error.code == "products"
