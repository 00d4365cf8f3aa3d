"""The store: one MongoDB database, its collections and indexes, in one place.

Works the same against MongoDB and the embedded SecantusDB. The shapes of the
queries follow SecantusDB's costs (measured; listed in the project's docs):

- every secondary index costs ~0.1 ms per inserted document, so a raw file's
  ``_id`` is its ``file_id`` (unique and looked up for free), ``path`` has one
  index and the planner's queries one more (``slots_night``, raw_files.py);
- reading a document costs ~30 us per 40-keyword header, whatever the
  projection, so a rescan does not read ``raw_files`` at all: it reads the
  *listing* (path -> size, mtime, problem) saved in a few large documents by
  the previous scan, trusted only while no raw-file write happened since (a
  version bumped by every write here) and ``raw_files`` was not dropped (its
  collection UUID): write ``raw_files`` only through this class;
- ``$in`` in ``find``/``delete`` is quadratic in the number of values (100:
  12 ms, 1,000: 0.55 s, 4,000: 8 s), so those lists go in chunks of
  ``IN_CHUNK``; ``$in`` inside an aggregate ``$match`` is linear;
- inserts are ~3x cheaper than upserts, so new documents are inserted and only
  those that already exist are replaced;
- ``find_one_and_update`` scans the whole collection: never use it (phase
  changes are ``update_one`` with the expected state in the filter, then ``find_one``);
- an acknowledged ``w: 1`` write is lost if the server is killed within ~0.1 s
  of it, so job documents are written with ``j: true``.

A store that cannot be reached answers within ``timeout_s`` (server selection) with
`StoreUnavailable` (a 503 at the edge, `errors.py`), not after PyMongo's 30 s.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from pymongo import AsyncMongoClient, IndexModel, ReplaceOne, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from soda_reduce.reduction.frame_index import FrameIndexer
from soda_reduce.reduction.index_model import RawFile, storable_header
from soda_reduce.runtime.store.errors import typed_errors
from soda_reduce.runtime.store.raw_files import (
    RAW_FILE_INDEXES,
    RAW_FILES,
    RAW_RULES,
    RAW_RULES_INDEXES,
    RawRules,
    StoreFrames,
    SyncClients,
    widen_rules,
)
from soda_reduce.runtime.store.supervision import StoreHealth

RAW_LISTING = "raw_listing"  # the "state" document and the saved listing's parts
JOBS = "jobs"
STEPS = "steps"
PRODUCTS = "products"

INDEXES: dict[str, list[IndexModel]] = {
    RAW_FILES: RAW_FILE_INDEXES,  # the planner's queries: runtime/store/raw_files.py
    RAW_RULES: RAW_RULES_INDEXES,
    # jobs, steps, products: their owners declare them (runtime/collection_owners.py)
}

DEFAULT_TIMEOUT_S = 2.0  # server selection: how long a call waits for an unreachable store
IN_CHUNK = 100  # find/delete $in values per query (quadratic on SecantusDB)
LISTING_PART = 5_000  # listing entries per document
MATCH_CHUNK = 10_000  # aggregate $match $in values per query (linear; keeps commands small)
WRITE_BATCH = 1000
DUPLICATE_KEY = 11000
_STATE_ID = "state"
VERSION_STEPS = 2  # raw-file version steps per index write (before and after it)
_SCAN = [{"$project": {"_id": 0, "path": 1, "size": 1, "mtime_ns": 1, "problem": 1}}]


class RawFileState(NamedTuple):
    """What a rescan compares with the disk, and whether the file has a problem."""

    size: int
    mtime_ns: int
    problem: str | None = None


@dataclass(frozen=True)
class RawListing:
    """Every indexed path with its state, as of ``version`` of the raw-file index.

    ``cached`` says it came from the listing saved by the last scan rather than
    from reading every ``raw_files`` document.
    """

    files: dict[str, RawFileState]
    version: int
    cached: bool


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def raw_file_document(raw: RawFile) -> dict[str, Any]:
    """RawFile as stored: ``_id`` is the file_id, the header a sub-document.

    BSON cannot hold integers beyond 64 bits: such header values become strings.
    """
    doc = {"_id": raw.file_id, **raw.to_dict()}
    doc["header"] = storable_header(doc["header"])
    return doc


class Store:
    """The service's database: collections, indexes, and the raw-file index API."""

    def __init__(
        self,
        client: AsyncMongoClient,
        database: str,
        *,
        owns_client: bool = False,
        url: str | None = None,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.db: AsyncDatabase = client[database]
        self._owns_client = owns_client
        # the planner's threads read raw_files with a synchronous client (raw_files.py)
        self.sync = SyncClients(url, client_options or {})
        self.rules = RawRules(self.db)  # the rules the stored files were classified with
        # jobs are acknowledged to clients: journaled, so a crash of the store keeps them
        self._jobs = self.db.get_collection(JOBS, write_concern=WriteConcern(j=True))
        self.health = StoreHealth()  # kept up to date by the embedded store's supervisor

    @classmethod
    def connect(
        cls,
        url: str,
        database: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        **client_options: Any,
    ) -> Store:
        """A store with its own client (closed by ``close``).

        ``timeout_s`` bounds server selection (a ``serverSelectionTimeoutMS`` in the URL
        wins): PyMongo's default of 30 s made every request hang while the store was down.
        """
        options: dict[str, Any] = {"tz_aware": True}
        if "serverselectiontimeoutms" not in url.lower():
            options["serverSelectionTimeoutMS"] = int(timeout_s * 1000)
        options.update(client_options)
        client = AsyncMongoClient(url, **options)
        return cls(client, database, owns_client=True, url=url, client_options=options)

    # the collections, for their owners only (runtime/collection_owners.py; tests arrange
    # documents through them too)

    @property
    def raw_files(self) -> AsyncCollection:
        return self.db[RAW_FILES]

    @property
    def jobs(self) -> AsyncCollection:
        return self._jobs

    @property
    def steps(self) -> AsyncCollection:
        return self.db[STEPS]

    @property
    def products(self) -> AsyncCollection:
        return self.db[PRODUCTS]

    async def ensure_indexes(self) -> None:
        """Create every index, the store's and its collections' owners'; safe at each start."""
        # the owners import this module: their indexes are read when first needed
        from soda_reduce.runtime.collection_owners import OWNED_INDEXES

        for name, models in {**INDEXES, **OWNED_INDEXES}.items():
            await self.db[name].create_indexes(models)

    @typed_errors
    async def ping(self) -> None:
        await self.db.command("ping")

    async def drop(self) -> None:
        """Drop the whole database (tests, ``--reset``)."""
        await self.client.drop_database(self.db.name)

    async def close(self) -> None:
        self.sync.close()
        if self._owns_client:
            await self.client.close()

    # -- raw files (the header index) ------------------------------------
    #
    # Every call of upsert_raw_files / delete_raw_files with something to write
    # increases the raw-file version by exactly VERSION_STEPS: once before writing
    # (a saved listing is trusted only while its version is the current one) and once
    # after (a reader that loaded the index during the write, and cached it under the
    # first step's version, sees the version move again and reloads).

    @typed_errors
    async def raw_files_version(self) -> int:
        state = await self.db[RAW_LISTING].find_one({"_id": _STATE_ID}, {"version": 1})
        return int(state.get("version", 0)) if state else 0

    async def _bump_version(self) -> None:
        listing = self.db[RAW_LISTING]
        try:
            await listing.update_one({"_id": _STATE_ID}, {"$inc": {"version": 1}}, upsert=True)
        except DuplicateKeyError:  # two first writers raced to create the state
            await listing.update_one({"_id": _STATE_ID}, {"$inc": {"version": 1}})

    @typed_errors
    async def raw_listing(self, *, exact: bool = False) -> RawListing:
        """The listing saved by the last scan if still valid, else read from ``raw_files``."""
        state = await self.db[RAW_LISTING].find_one({"_id": _STATE_ID}) or {}
        version = int(state.get("version", 0))
        saved = state.get("listing")
        if (
            not exact
            and saved
            and saved.get("version") == version
            and saved.get("collection") == await self._raw_files_uuid()
        ):
            files = await self._load_listing(saved["generation"], int(saved["parts"]))
            if files is not None:
                return RawListing(files, version, cached=True)
        cursor = await self.raw_files.aggregate(_SCAN, batchSize=10_000)
        files = {
            doc["path"]: RawFileState(int(doc["size"]), int(doc["mtime_ns"]), doc.get("problem"))
            async for doc in cursor
        }
        return RawListing(files, version, cached=False)

    async def _raw_files_uuid(self) -> Any:
        """Changes when raw_files is dropped and recreated, which bypasses the version."""
        cursor = await self.db.list_collections(filter={"name": RAW_FILES})
        infos = await cursor.to_list()
        return infos[0].get("info", {}).get("uuid") if infos else None

    async def _load_listing(self, generation: str, parts: int) -> dict[str, RawFileState] | None:
        prefix = generation + "/"
        cursor = self.db[RAW_LISTING].find({"_id": {"$gte": prefix, "$lt": generation + "0"}})
        docs = await cursor.to_list()
        if len(docs) != parts:
            return None  # a concurrent save removed parts of it
        docs.sort(key=lambda doc: doc["_id"])
        return {
            path: RawFileState(size, mtime_ns, problem)
            for doc in docs
            for path, size, mtime_ns, problem in doc["entries"]
        }

    async def save_raw_listing(self, files: Mapping[str, RawFileState], version: int) -> bool:
        """Save the listing of the index at ``version``; False if the index has moved on."""
        listing = self.db[RAW_LISTING]
        generation = uuid.uuid4().hex
        entries = [[path, *state] for path, state in sorted(files.items())]
        docs = [
            {"_id": f"{generation}/{n:06d}", "generation": generation, "entries": list(part)}
            for n, part in enumerate(chunks(entries, LISTING_PART))
        ]
        if docs:
            await listing.insert_many(docs)
        if version == 0:  # nothing written yet: the state may not exist
            with contextlib.suppress(DuplicateKeyError):
                await listing.update_one(
                    {"_id": _STATE_ID}, {"$setOnInsert": {"version": 0}}, upsert=True
                )
        pointer = {
            "generation": generation,
            "version": version,
            "parts": len(docs),
            "collection": await self._raw_files_uuid(),
        }
        result = await listing.update_one(
            {"_id": _STATE_ID, "version": version}, {"$set": {"listing": pointer}}
        )
        saved = result.matched_count == 1
        if saved:  # older listings are garbage now
            await listing.delete_many(
                {"_id": {"$ne": _STATE_ID}, "generation": {"$ne": generation}}
            )
        else:
            await listing.delete_many({"generation": generation})
        return saved

    @typed_errors
    async def annotations_fingerprint(self) -> str | None:
        """What the stored claims and overrides were computed with (runtime.claims)."""
        state = await self.db[RAW_LISTING].find_one({"_id": _STATE_ID}, {"annotations": 1})
        return state.get("annotations") if state else None

    async def save_annotations_fingerprint(self, fingerprint: str) -> None:
        with contextlib.suppress(DuplicateKeyError):
            await self.db[RAW_LISTING].update_one(
                {"_id": _STATE_ID}, {"$set": {"annotations": fingerprint}}, upsert=True
            )

    async def raw_file_stats(self) -> dict[str, tuple[int, int]]:
        """path -> (size, mtime_ns) of every indexed file: what a rescan compares with."""
        listing = await self.raw_listing()
        return {path: (state.size, state.mtime_ns) for path, state in listing.files.items()}

    async def upsert_raw_files(self, files: Sequence[RawFile]) -> None:
        """Insert or replace by path, in unordered bulk writes.

        New files are inserted; those already there fail with a duplicate key
        and are replaced by id. A path indexed under another id (the authority
        changed) is deleted and inserted again.
        """
        if not files:
            return
        await self._bump_version()
        try:
            await widen_rules(self.db, files)  # before the files: it must cover them
            await self._upsert(files)
        finally:
            await self._bump_version()

    async def _upsert(self, files: Sequence[RawFile]) -> None:
        for batch in chunks(files, WRITE_BATCH):
            docs = [raw_file_document(raw) for raw in batch]
            again = await self._insert_new(docs)
            if not again:
                continue
            try:
                await self.raw_files.bulk_write(
                    [ReplaceOne({"_id": doc["_id"]}, doc, upsert=True) for doc in again],
                    ordered=False,
                )
            except BulkWriteError as exc:
                moved = [again[e["index"]] for e in _duplicates(exc)]
                await self._delete_paths(doc["path"] for doc in moved)
                await self.raw_files.insert_many(moved, ordered=False)

    async def _insert_new(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Insert what is new; return the documents whose path or id is already there."""
        try:
            await self.raw_files.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            return [docs[e["index"]] for e in _duplicates(exc)]
        return []

    async def delete_raw_files(self, paths: Iterable[str]) -> int:
        """Forget files by path; returns how many were removed."""
        paths = sorted(set(paths))
        if not paths:
            return 0
        await self._bump_version()
        try:
            return await self._delete_paths(paths)
        finally:
            await self._bump_version()

    async def _delete_paths(self, paths: Iterable[str]) -> int:
        deleted = 0
        for batch in chunks(list(paths), IN_CHUNK):
            result = await self.raw_files.delete_many({"path": {"$in": list(batch)}})
            deleted += result.deleted_count
        return deleted

    @typed_errors
    async def all_raw_files(self) -> list[RawFile]:
        """Every indexed file, sorted by path (sorted here: cheaper than on the server)."""
        cursor = await self.raw_files.aggregate([], batchSize=10_000)
        files = [RawFile.from_dict(doc) async for doc in cursor]
        files.sort(key=lambda raw: raw.path)
        return files

    @typed_errors
    async def raw_files_by_id(self, ids: Iterable[str]) -> list[RawFile]:
        """The files with these ids, in the order asked; unknown ids are left out."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, RawFile] = {}
        for batch in chunks(wanted, MATCH_CHUNK):
            pipeline = [{"$match": {"_id": {"$in": list(batch)}}}]
            async for doc in await self.raw_files.aggregate(pipeline, batchSize=10_000):
                found[doc["_id"]] = RawFile.from_dict(doc)
        return [found[i] for i in wanted if i in found]

    async def raw_files_with_problems(self) -> list[tuple[str, str]]:
        """(path, problem) of every indexed file that could not be read properly, by path."""
        listing = await self.raw_listing()
        return sorted((p, s.problem) for p, s in listing.files.items() if s.problem is not None)

    @typed_errors
    async def count_raw_files(self) -> int:
        return await self.raw_files.count_documents({})

    def frame_source(self, pipeline: str, indexer: FrameIndexer) -> StoreFrames:
        """The planner's frame source over one pipeline's files (synchronous: call it and
        plan in a worker thread)."""
        db = self.sync.client()[self.db.name]
        return StoreFrames(db[RAW_FILES], db[RAW_RULES], pipeline, indexer)

    @typed_errors
    async def raw_files_where(self, filter_: Mapping[str, Any]) -> list[RawFile]:
        """The files of one query of the ``slots_night`` index (re-classification)."""
        return [RawFile.from_dict(doc) async for doc in self.raw_files.find(filter_)]


def _duplicates(exc: BulkWriteError) -> list[dict[str, Any]]:
    """The duplicate-key errors of a bulk write; anything else is re-raised."""
    errors = exc.details.get("writeErrors", [])
    if not errors or any(e.get("code") != DUPLICATE_KEY for e in errors):
        raise exc
    return errors
