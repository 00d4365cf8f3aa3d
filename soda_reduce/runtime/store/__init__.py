"""The store: MongoDB (or the embedded SecantusDB) through PyMongo's async client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from soda_reduce.config import Settings
from soda_reduce.runtime.store.embedded import EmbeddedMongo, EmbeddedMongoError
from soda_reduce.runtime.store.store import (
    INDEXES,
    JOBS,
    PRODUCTS,
    RAW_FILES,
    RAW_LISTING,
    STEPS,
    RawFileState,
    RawListing,
    Store,
    raw_file_document,
)

__all__ = [
    "INDEXES",
    "JOBS",
    "PRODUCTS",
    "RAW_FILES",
    "RAW_LISTING",
    "STEPS",
    "EmbeddedMongo",
    "EmbeddedMongoError",
    "RawFileState",
    "RawListing",
    "Store",
    "open_store",
    "raw_file_document",
]


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    """The configured store, indexes ensured; the embedded server lives as long as the block.

    With ``settings.mongo_url`` set, connect there; otherwise start SecantusDB
    with its data in ``settings.data_dir / "mongo"``, which persists across runs.
    """
    embedded: EmbeddedMongo | None = None
    url = settings.mongo_url
    if not url:
        embedded = EmbeddedMongo(settings.data_dir / "mongo")
        await embedded.start()
        url = embedded.url
    store = Store.connect(url, settings.database)
    try:
        await store.ensure_indexes()
        yield store
    finally:
        await store.close()
        if embedded is not None:
            await embedded.stop()
