"""The ``products`` collection: one document per file a step made, the only code that reads
or writes it.

A product's ID is ``STEPKEY/FILE``: the step key names the computation (content-addressed,
`runtime/products.py` keeps the files), so two jobs that needed the same step register the
very same documents. Registering is therefore idempotent: documents already there are
"already registered", never a failure; any other refusal is raised typed
(`runtime/store/errors.py`) and the job that registered ends in ERROR.

Each document records its step's inputs (``inputs``: category, role, raw file ID or
upstream step key): DataLink's #progenitor and #calibration, and, through the multikey
``input_file`` index, what a raw file's page lists as made from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pymongo import ASCENDING, IndexModel

from soda_reduce.runtime.store import Store
from soda_reduce.runtime.store.errors import DuplicateKey, retrying
from soda_reduce.runtime.store.store import IN_CHUNK

PRODUCT_INDEXES = [
    IndexModel([("product_id", ASCENDING)], unique=True, name="product_id_unique"),
    IndexModel([("step_key", ASCENDING)], name="step_key"),
    # a raw file's page lists what was made from it (multikey: every input's file_id)
    IndexModel([("inputs.file_id", ASCENDING)], name="input_file"),
]

FIELDS = {"_id": 0, "product_id": 1, "content_type": 1}  # what a cutout check reads


class ProductRecords:
    """Registered products: registration, lookups by ID and by input, collection."""

    def __init__(self, store: Store) -> None:
        self._products = store.products

    async def register(self, docs: Sequence[dict[str, Any]]) -> int:
        """Insert the products' documents; how many were new. Those already registered
        (same product ID: same step, same file) are left as they are."""
        if not docs:
            return 0
        fresh = [dict(doc) for doc in docs]  # insert_many adds an _id to what it is given
        try:
            await retrying(lambda: self._products.insert_many(fresh, ordered=False))
        except DuplicateKey as exc:  # only duplicates: an earlier job registered them
            return len(docs) - len(exc.duplicates)
        return len(docs)

    async def get(self, product_id: str) -> dict[str, Any] | None:
        return await retrying(
            lambda: self._products.find_one({"product_id": product_id}, {"_id": 0})
        )

    async def content_types(self, product_ids: Iterable[str]) -> dict[str, str | None]:
        """product ID -> content type, for those registered (chunks: ``$in`` is
        quadratic on SecantusDB)."""
        wanted = sorted(set(product_ids))
        found: dict[str, str | None] = {}
        for start in range(0, len(wanted), IN_CHUNK):
            query = {"product_id": {"$in": wanted[start : start + IN_CHUNK]}}
            docs = await retrying(lambda q=query: self._products.find(q, FIELDS).to_list())
            found.update({d["product_id"]: d.get("content_type") for d in docs})
        return found

    async def made_from(self, file_id: str, limit: int) -> list[dict[str, Any]]:
        """Registered products whose step read ``file_id`` (``input_file`` index), at most
        ``limit``; ``role`` says how the step used it (main, associated) in place of the
        step's whole input list."""
        query = {"inputs.file_id": file_id}
        docs = await retrying(lambda: self._products.find(query, {"_id": 0}).limit(limit).to_list())
        for doc in docs:
            inputs = doc.pop("inputs", None) or []
            doc["role"] = next((i.get("role") for i in inputs if i.get("file_id") == file_id), "")
        return docs

    async def forget_step(self, step_key: str) -> int:
        """Unregister every product of a collected step; how many went."""
        result = await retrying(lambda: self._products.delete_many({"step_key": step_key}))
        return result.deleted_count
