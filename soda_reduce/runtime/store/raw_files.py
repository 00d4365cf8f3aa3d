"""The raw-file index's query side: its indexes, the rules it was classified with, and the
planner's frame source over it.

Each ``raw_files`` document carries its classification (``reduction/frame_index.py``):
``slots`` (one entry per category and keyword set the planner asks equality on, plus
the rules token ``pipeline@version``) and ``night`` (the night label's ordinal) are
the compound index ``slots_night``, so every question of the planner is one equality on
``slots`` and at most a range of nights: SecantusDB answers it as an IXSCAN of exactly
that range (``explain`` in docs/store.md). Nothing else is named in these filters: a
field outside the index turns SecantusDB's plan into a collection scan.

``raw_rules`` holds one small document per rules token: the range of nights of its
files and the bounds of "night - MJD" over them (``night_offsets``, which turns an MJD
window into a range of nights). Both are widened *before* a batch of files is
written, so they always cover every stored file of that token; the indexer finds the
files of stale rules through them (`stale_rules`, `nights_windows`).

The planner is synchronous and runs in a worker thread: `StoreFrames` asks with
PyMongo's synchronous client (one pool per store, made on first use), so documents are
decoded in that thread, never on the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pymongo import ASCENDING, IndexModel, MongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from soda_reduce.reduction.frame_index import FrameIndexer
from soda_reduce.reduction.frame_source import FrameQuery, key_values, night_offset
from soda_reduce.reduction.index_model import RawFile
from soda_reduce.reduction.organisation import Frame

RAW_FILES = "raw_files"
RAW_RULES = "raw_rules"  # rules token -> nights and night offsets of its files

RAW_FILE_INDEXES = [  # _id is the file_id: unique without another index
    IndexModel([("path", ASCENDING)], unique=True, name="path_unique"),
    # every question of the planner: one slot, a range of nights (multikey on slots)
    IndexModel([("slots", ASCENDING), ("night", ASCENDING)], name="slots_night"),
]
RAW_RULES_INDEXES = [IndexModel([("pipeline", ASCENDING)], name="pipeline")]
ID_CHUNK = 1000  # IDs per aggregate $match (linear there, unlike find's $in)
WINDOW_NIGHTS = 30  # nights per question while re-classifying a pipeline's files


# ----------------------------------------------------------------------- raw_rules


@dataclass
class RulesBounds:
    """What one batch of files adds to its rules' document."""

    pipeline: str
    nights: list[int] = field(default_factory=list)
    offsets: list[float] = field(default_factory=list)


def bounds_of(files: Sequence[RawFile]) -> dict[str, RulesBounds]:
    """Per rules token, the nights and night offsets of the files classified with it."""
    found: dict[str, RulesBounds] = {}
    for raw in files:
        record = raw.classified
        if record is None or raw.pipeline is None:
            continue
        bounds = found.setdefault(record.rules, RulesBounds(raw.pipeline))
        if record.night is not None:
            bounds.nights.append(record.night)
        offset = night_offset(record.night, record.mjd)
        if offset is not None:
            bounds.offsets.append(offset)
    return found


async def widen_rules(db: AsyncDatabase, files: Sequence[RawFile]) -> None:
    """Widen the rules documents to cover ``files`` (call before writing them)."""
    for token, bounds in bounds_of(files).items():
        low: dict[str, Any] = {}
        high: dict[str, Any] = {}
        if bounds.nights:
            low["night_min"], high["night_max"] = min(bounds.nights), max(bounds.nights)
        if bounds.offsets:
            low["offset_min"], high["offset_max"] = min(bounds.offsets), max(bounds.offsets)
        update: dict[str, Any] = {"$set": {"pipeline": bounds.pipeline}}
        if low:
            update |= {"$min": low, "$max": high}
        try:
            await db[RAW_RULES].update_one({"_id": token}, update, upsert=True)
        except DuplicateKeyError:  # two first writers raced to create it
            await db[RAW_RULES].update_one({"_id": token}, update)


class RawRules:
    """The ``raw_rules`` collection: which rules the stored files were classified with."""

    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db

    async def stale(self, pipeline: str, current: str) -> list[dict[str, Any]]:
        """The rules documents of ``pipeline`` other than ``current``: files to re-classify."""
        cursor = self.db[RAW_RULES].find({"pipeline": pipeline})
        return [doc async for doc in cursor if doc["_id"] != current]

    async def forget(self, installed: Sequence[str], only: str | None = None) -> None:
        """Drop the rules documents no stored file uses any more (``only``: that one; else
        those of pipelines not in ``installed``)."""
        if only is not None:
            candidates: list[dict[str, Any]] = [{"_id": only}]
        else:
            cursor = self.db[RAW_RULES].find({})
            candidates = [doc async for doc in cursor if doc.get("pipeline") not in installed]
        for rules in candidates:
            if await self.db[RAW_FILES].find_one({"slots": rules["_id"]}, {"_id": 1}) is None:
                await self.db[RAW_RULES].delete_one({"_id": rules["_id"]})


def nights_windows(rules: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Filters that together reach every file of a rules token: windows of its nights,
    then the files without a night (bounded: one question per `WINDOW_NIGHTS`)."""
    token = rules["_id"]
    low, high = rules.get("night_min"), rules.get("night_max")
    if low is not None and high is not None:
        for start in range(int(low), int(high) + 1, WINDOW_NIGHTS):
            span = {"$gte": start, "$lt": start + WINDOW_NIGHTS}
            yield {"slots": token, "night": span}
    yield {"slots": token, "night": None}


# -------------------------------------------------------------------- frame source


class SyncClients:
    """PyMongo's synchronous client for the planner's threads, made once per store."""

    def __init__(self, url: str | None, options: Mapping[str, Any]) -> None:
        self.url = url
        self.options = dict(options)
        self._client: MongoClient | None = None
        self._lock = threading.Lock()

    def client(self) -> MongoClient:
        if self.url is None:
            raise RuntimeError("this store was not made by Store.connect: it has no URL")
        with self._lock:
            if self._client is None:
                self._client = MongoClient(self.url, **self.options)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


@dataclass
class QueryCounts:
    """What a frame source asked and read: documents are what SecantusDB pays for."""

    queries: int = 0
    documents: int = 0


class StoreFrames:
    """The frame source of one pipeline over ``raw_files``, for one planning run.

    Frames are rebuilt from their stored classification (``FrameIndexer.frame``) and
    kept by ID, so a frame read twice is one object. A question the slots do not cover
    (a keyword set the cascade never asks) reads the pipeline's whole rules token and
    filters here: correct, and in proportion to the pipeline's files.
    """

    def __init__(
        self,
        collection: Collection,
        rules: Collection,
        pipeline: str,
        indexer: FrameIndexer,
    ) -> None:
        self.collection = collection
        self.rules_collection = rules
        self.pipeline = pipeline
        self.indexer = indexer
        self.counts = QueryCounts()
        self._frames: dict[str, Frame] = {}

    def find(self, query: FrameQuery) -> list[Frame]:
        covered = query.keywords in self.indexer.keysets.get(query.category, ())
        filter_: dict[str, Any] = {
            "slots": self.indexer.slot(query.category, query.keys)
            if covered
            else self.indexer.rules
        }
        if query.nightless:
            filter_["night"] = None
        elif query.nights is not None:
            span: dict[str, int] = {}
            if query.nights.low is not None:
                span["$gte"] = query.nights.low
            if query.nights.high is not None:
                span["$lte"] = query.nights.high
            if span:
                filter_["night"] = span
        frames = self._read(filter_)  # a slot is a digest: check what it stands for
        return [
            f
            for f in frames
            if f.has(query.category) and key_values(f, query.keywords) == query.keys
        ]

    def by_ids(self, ids: Sequence[str]) -> dict[str, Frame]:
        wanted = [i for i in dict.fromkeys(ids) if i not in self._frames]
        for start in range(0, len(wanted), ID_CHUNK):
            batch = wanted[start : start + ID_CHUNK]
            self.counts.queries += 1
            for doc in self.collection.aggregate([{"$match": {"_id": {"$in": batch}}}]):
                self._remember(doc)
        return {i: self._frames[i] for i in ids if i in self._frames}

    def night_offsets(self) -> tuple[float, float] | None:
        return self._offsets

    @cached_property
    def _offsets(self) -> tuple[float, float] | None:
        self.counts.queries += 1
        doc = self.rules_collection.find_one({"_id": self.indexer.rules}) or {}
        low, high = doc.get("offset_min"), doc.get("offset_max")
        if isinstance(low, int | float) and isinstance(high, int | float):
            return float(low), float(high)
        return None

    def _read(self, filter_: Mapping[str, Any]) -> list[Frame]:
        self.counts.queries += 1
        found = [self._remember(doc) for doc in self.collection.find(filter_)]
        return [f for f in found if f.raw.pipeline == self.pipeline]

    def _remember(self, doc: Mapping[str, Any]) -> Frame:
        self.counts.documents += 1
        frame = self._frames.get(doc["_id"])
        if frame is None:
            raw = RawFile.from_dict(doc)
            frame = self.indexer.frame(raw)
            if raw.pipeline == self.pipeline:
                self._frames[raw.file_id] = frame
        return frame
