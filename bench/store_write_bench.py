"""Benchmark: the embedded store's write floor for ``raw_files`` documents.

Documents are built the way the indexer builds them (``RawFile`` -> ``raw_file_document``)
from the headers of ``soda_reduce.pipelines.ccd.scale_archive`` (four instruments, 33 to
111 cards), without files. Each configuration writes ``--docs`` documents into a fresh
collection of one SecantusDB server (standalone, as embedded), best of ``--repeat``:

  insert_many at batch sizes 100 / 1,000 / 10,000 with the indexes ``Store`` declares for
  raw_files; with ``path_unique`` only; without any secondary index; with ``j: true``;
  with empty headers (what the header's fields cost); two writers at once;
  ``Store.upsert_raw_files`` of new documents (the indexer's path: version bumps around
  the bulk insert) and of documents already there (a re-index: duplicate inserts, then
  replacements).

    .venv/bin/python bench/store_write_bench.py --docs 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bson
from pymongo import WriteConcern

from soda_reduce.pipelines import registry
from soda_reduce.pipelines.ccd import scale_archive
from soda_reduce.reduction.fits_headers import parse_cards
from soda_reduce.reduction.index_model import RawFile, raw_file_id
from soda_reduce.reduction.overrides import Overrides
from soda_reduce.runtime.claims import Annotator
from soda_reduce.runtime.store import EmbeddedMongo, Store
from soda_reduce.runtime.store.store import INDEXES, RAW_FILES, raw_file_document

Writer = Callable[[Any, list[dict[str, Any]], int], Awaitable[None]]


def raw_files(count: int) -> list[RawFile]:
    """What the indexer would store for an archive of ``count`` files (no files written)."""
    specs = scale_archive.plan_archive(Path("bench"), count, (8, 8))
    writer = scale_archive.FileWriter(1, datasum=True)
    annotate = Annotator(registry(), Overrides()).annotate
    files = []
    for spec in specs:
        head = writer.header(spec, writer.data(spec)).decode("latin-1")
        header = parse_cards(head[: head.index("END     ")]) or {}
        rel = spec.path.as_posix()
        files.append(
            annotate(
                RawFile(
                    raw_file_id(rel, "bench.example"),
                    rel,
                    header,
                    checksum="datasum:" + "c" * 64,
                    header_checksum="h" * 64,
                    size=5760,
                    mtime_ns=1_700_000_000_000_000_000 + len(files),
                )
            )
        )
    return files


async def insert_batches(coll: Any, docs: list[dict[str, Any]], batch: int) -> None:
    for i in range(0, len(docs), batch):
        await coll.insert_many(docs[i : i + batch], ordered=False)


async def two_writers(coll: Any, docs: list[dict[str, Any]], batch: int) -> None:
    half = len(docs) // 2
    await asyncio.gather(
        insert_batches(coll, docs[:half], batch), insert_batches(coll, docs[half:], batch)
    )


async def measure(
    store: Store,
    name: str,
    docs: list[dict[str, Any]],
    write: Writer,
    batch: int,
    indexes: str = "store",
    write_concern: WriteConcern | None = None,
) -> float:
    """Seconds to write ``docs`` into a fresh collection with ``indexes``: the ones ``Store``
    declares for raw_files, ``path`` (path_unique only) or ``none``."""
    coll = store.db.get_collection(name, write_concern=write_concern)
    await store.db.drop_collection(name)
    models = {"store": INDEXES[RAW_FILES], "path": INDEXES[RAW_FILES][:1], "none": []}[indexes]
    if models:
        await coll.create_indexes(models)
    t0 = time.perf_counter()
    await write(coll, docs, batch)
    seconds = time.perf_counter() - t0
    await store.db.drop_collection(name)
    return seconds


async def run(count: int, repeat: int) -> None:
    files = raw_files(count)
    docs = [raw_file_document(raw) for raw in files]
    bare = [{**doc, "header": {}} for doc in docs]
    size = sum(len(bson.encode(doc)) for doc in docs[:1000]) / 1000
    names = ", ".join(model.document["name"] for model in INDEXES[RAW_FILES])
    journal = WriteConcern(j=True)
    cases: list[tuple[str, list[dict[str, Any]], Writer, int, dict[str, Any]]] = [
        ("insert_many, batch 100", docs, insert_batches, 100, {}),
        ("insert_many, batch 1,000", docs, insert_batches, 1000, {}),
        ("insert_many, batch 10,000", docs, insert_batches, 10_000, {}),
        ("  path_unique only, batch 1,000", docs, insert_batches, 1000, {"indexes": "path"}),
        ("  no secondary index, batch 1,000", docs, insert_batches, 1000, {"indexes": "none"}),
        ("  j: true, batch 1,000", docs, insert_batches, 1000, {"write_concern": journal}),
        ("  empty headers, batch 1,000", bare, insert_batches, 1000, {}),
        ("  two writers at once, batch 1,000", docs, two_writers, 1000, {}),
    ]
    with tempfile.TemporaryDirectory(prefix="store_write_bench_") as work:
        async with EmbeddedMongo(Path(work) / "mongo") as mongo:
            store = Store.connect(mongo.url, "store_write_bench")
            await store.ensure_indexes()
            print(f"{count} raw_files documents, {size:.0f} bytes of BSON each, best of {repeat}")
            print(f"raw_files indexes: _id, {names}")
            print(f"load average {os.getloadavg()[0]:.2f} (2 cores, shared with other work)")
            print(f"{'write':<44}{'seconds':>9}{'docs/s':>9}")
            for label, items, write, batch, options in cases:
                runs = [
                    await measure(store, f"c{n}", items, write, batch, **options)
                    for n in range(repeat)
                ]
                print(f"{label:<44}{min(runs):>9.2f}{count / min(runs):>9.0f}")
            for label, again in (("new documents", False), ("documents already there", True)):
                best = float("inf")
                for _ in range(repeat):
                    if not again:
                        await store.drop()
                        await store.ensure_indexes()
                    t0 = time.perf_counter()
                    for i in range(0, count, 1000):
                        await store.upsert_raw_files(files[i : i + 1000])
                    best = min(best, time.perf_counter() - t0)
                print(f"{'Store.upsert_raw_files, ' + label:<44}{best:>9.2f}{count / best:>9.0f}")
            await store.drop()
            await store.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    asyncio.run(run(args.docs, args.repeat))


if __name__ == "__main__":
    main()
