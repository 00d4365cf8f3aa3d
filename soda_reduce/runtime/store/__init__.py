"""The store: MongoDB (or the embedded SecantusDB) through PyMongo's async client.

The names below are loaded on first use: importing this package costs nothing, so the
store keeper (``runtime/store/keeper.py``) and the command line's early checks start
without PyMongo (~0.1 s) and the store's modules.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from soda_reduce.runtime.store.sharing import (
    KEEPER,
    SharedStore,
    StoreOpenError,
    StoreRecord,
    attach,
    take_ownership,
)

if TYPE_CHECKING:
    from soda_reduce.config import Settings
    from soda_reduce.runtime.store.embedded import EmbeddedMongo, EmbeddedMongoError
    from soda_reduce.runtime.store.errors import StoreUnavailable, is_outage, store_errors
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
    from soda_reduce.runtime.store.supervision import Backoff, StoreHealth, StoreSupervisor

_LAZY = {
    "embedded": ("EmbeddedMongo", "EmbeddedMongoError"),
    "errors": ("StoreUnavailable", "is_outage", "store_errors"),
    "store": (
        "INDEXES",
        "JOBS",
        "PRODUCTS",
        "RAW_FILES",
        "RAW_LISTING",
        "STEPS",
        "RawFileState",
        "RawListing",
        "Store",
        "raw_file_document",
    ),
    "supervision": ("Backoff", "StoreHealth", "StoreSupervisor"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = [
    "INDEXES",
    "JOBS",
    "PRODUCTS",
    "RAW_FILES",
    "RAW_LISTING",
    "STEPS",
    "Backoff",
    "EmbeddedMongo",
    "EmbeddedMongoError",
    "RawFileState",
    "RawListing",
    "SharedStore",
    "Store",
    "StoreHealth",
    "StoreOpenError",
    "StoreSupervisor",
    "StoreUnavailable",
    "is_outage",
    "open_store",
    "raw_file_document",
    "store_errors",
    "url_hosts",
]

STOP_S = 5.0  # the embedded server's clean shutdown (~0.14 s measured) before SIGKILL
PING_S = 1.0  # a running store found through its record must answer this fast


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def where(url: str) -> str:
    """The hosts of a MongoDB URL, without credentials or options (for messages)."""
    rest = url.split("://", 1)[-1]
    return rest.rsplit("@", 1)[-1].split("/", 1)[0].split("?", 1)[0] or url.split("://", 1)[0]


def url_hosts(url: str) -> list[tuple[str, int]]:
    """The hosts of a MongoDB URL as PyMongo parses it, without any network (ValueError
    with the first line of PyMongo's reason if it cannot)."""
    from pymongo.errors import PyMongoError
    from pymongo.uri_parser import parse_uri

    try:
        return list(parse_uri(url)["nodelist"])
    except (PyMongoError, ValueError) as exc:
        raise ValueError(str(exc).splitlines()[0][:200]) from None


@asynccontextmanager
async def open_store(
    settings: Settings,
    *,
    supervise: bool = False,
    owner: str = "serve",
    shared: SharedStore | None = None,
) -> AsyncIterator[Store]:
    """The configured store, indexes ensured, for as long as the block lasts.

    With ``settings.mongo_url`` set, connect there. Otherwise the embedded SecantusDB of
    ``settings.data_dir`` (data in ``mongo/``, persisted across runs), shared by every
    process using that data directory (`runtime.store.sharing`): ``supervise`` (the
    long-running commands, named by ``owner``) starts and supervises it and refuses a
    directory another one owns; without it the process connects to the running store,
    or to one a keeper starts, which lingers ``settings.store_linger_s`` after the last
    user (``shared``: a hold taken early, see `sharing.attach`).

    A store that cannot be opened raises `StoreOpenError`, whose message is one line.
    """
    if settings.mongo_url:
        what = f"MongoDB at {where(settings.mongo_url)}"
        context = _connected(settings, settings.mongo_url, what)
    elif supervise:
        context = _owned(settings, owner)
    else:
        context = _attached(settings, shared)
    async with context as store:
        yield store


@asynccontextmanager
async def _connected(settings: Settings, url: str, what: str) -> AsyncIterator[Store]:
    from pymongo.errors import ConnectionFailure, PyMongoError

    from soda_reduce.runtime.store.store import Store

    store = Store.connect(url, settings.database, timeout_s=settings.store_timeout_s)
    try:
        try:
            await store.ensure_indexes()
        except ConnectionFailure:
            raise StoreOpenError(
                f"{what} does not answer within {settings.store_timeout_s:g} s"
            ) from None
        except PyMongoError as exc:
            raise StoreOpenError(f"{what} refused: {str(exc).splitlines()[0][:200]}") from None
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def _attached(settings: Settings, shared: SharedStore | None) -> AsyncIterator[Store]:
    from soda_reduce.runtime.store.store import Store

    if shared is None:
        shared = await asyncio.to_thread(attach, settings.data_dir, settings.store_linger_s)
    try:
        record = await asyncio.to_thread(shared.wait)
        store = Store.connect(record.url, settings.database, timeout_s=settings.store_timeout_s)
        try:
            await _answers(store, record, settings)
            await store.ensure_indexes()
            yield store
        finally:
            await store.close()
    finally:
        shared.close()


async def _answers(store: Store, record: StoreRecord, settings: Settings) -> None:
    from soda_reduce.runtime.store.errors import StoreUnavailable

    try:
        async with asyncio.timeout(PING_S):
            await store.ping()
    except (TimeoutError, StoreUnavailable):
        kind = "keeper" if record.owner == KEEPER else record.owner
        raise StoreOpenError(
            f"the embedded store of {settings.data_dir} ({record.describe()}) does not answer "
            f"within {PING_S:g} s; if its {kind} is stuck, stop it"
        ) from None


@asynccontextmanager
async def _owned(settings: Settings, owner: str) -> AsyncIterator[Store]:
    from soda_reduce.runtime.store.embedded import EmbeddedMongo
    from soda_reduce.runtime.store.store import Store
    from soda_reduce.runtime.store.supervision import StoreSupervisor

    held = await asyncio.to_thread(take_ownership, settings.data_dir, owner)
    embedded = EmbeddedMongo(settings.data_dir / "mongo", stop_timeout=STOP_S)
    supervisor: StoreSupervisor | None = None
    try:
        await embedded.start()
        assert embedded.port is not None
        held.publish(embedded.port, embedded.host)
        store = Store.connect(embedded.url, settings.database, timeout_s=settings.store_timeout_s)
        supervisor = StoreSupervisor(embedded, store.health)
        try:
            supervisor.start()
            await store.ensure_indexes()
            yield store
        finally:
            held.close()  # before the server stops: no command attaches to a dying store
            await store.close()
    finally:
        held.close()
        if supervisor is not None:
            await supervisor.stop()
        else:
            await embedded.stop()
