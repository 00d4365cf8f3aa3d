"""Every collection of the store and the modules that own it (docs/store.md).

A collection's documents, queries and indexes live in its owner's modules, where the
store's quirks they work around are written down; nothing else touches PyMongo or a
collection (tests/test_store_owners.py keeps it so). The store creates every owner's
indexes at start (`Store.ensure_indexes`, which reads `OWNED_INDEXES` here).
"""

from __future__ import annotations

from dataclasses import dataclass

from pymongo import IndexModel

from soda_reduce.runtime.job_lists import OWNERS
from soda_reduce.runtime.jobs import JOB_INDEXES
from soda_reduce.runtime.product_records import PRODUCT_INDEXES
from soda_reduce.runtime.step_cache import STEP_INDEXES
from soda_reduce.runtime.store.raw_files import RAW_RULES
from soda_reduce.runtime.store.store import JOBS, PRODUCTS, RAW_FILES, RAW_LISTING, STEPS


@dataclass(frozen=True)
class Owned:
    """One collection: its owners (modules under ``soda_reduce/``) and the indexes they
    declare (those of the raw-file index are declared by the store itself)."""

    name: str
    owners: tuple[str, ...]
    indexes: tuple[IndexModel, ...] = ()


STORE = "runtime/store/store.py"
COLLECTIONS: tuple[Owned, ...] = (
    Owned(RAW_FILES, (STORE, "runtime/store/raw_files.py")),
    Owned(RAW_LISTING, (STORE,)),
    Owned(RAW_RULES, ("runtime/store/raw_files.py",)),
    Owned(
        JOBS,
        ("runtime/jobs.py", "runtime/job_lists.py", "runtime/job_inserts.py"),
        tuple(JOB_INDEXES),
    ),
    Owned(OWNERS, ("runtime/job_lists.py",)),
    Owned(STEPS, ("runtime/step_cache.py",), tuple(STEP_INDEXES)),
    Owned(PRODUCTS, ("runtime/product_records.py",), tuple(PRODUCT_INDEXES)),
)
OWNED_INDEXES: dict[str, list[IndexModel]] = {
    c.name: list(c.indexes) for c in COLLECTIONS if c.indexes
}
