"""The store against a real SecantusDB: indexes, the raw-file API, the listing, the server."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from soda_reduce.config import Settings
from soda_reduce.reduction.index_model import RawFile, raw_file_id
from soda_reduce.runtime.store import (
    INDEXES,
    EmbeddedMongo,
    EmbeddedMongoError,
    RawFileState,
    Store,
    open_store,
)
from soda_reduce.runtime.store import store as store_module
from soda_reduce.runtime.store.store import VERSION_STEPS


def raw(path: str, *, authority: str = "test.org", size: int = 5760, **header: object) -> RawFile:
    return RawFile(
        file_id=raw_file_id(path, authority),
        path=path,
        header={"IMAGETYP": "bias", "XBINNING": 1, **header},
        checksum="c" * 64,
        header_checksum="h" * 64,
        size=size,
        mtime_ns=1_700_000_000_000_000_000,
    )


async def test_indexes_are_created_once_and_idempotent(store: Store) -> None:
    await store.ensure_indexes()  # the fixture already did it once
    for collection, models in INDEXES.items():
        info = await store.db[collection].index_information()
        for model in models:
            spec = model.document
            assert spec["name"] in info, (collection, spec["name"])
            assert info[spec["name"]].get("unique", False) == spec.get("unique", False)


async def test_raw_files_round_trip(store: Store) -> None:
    files = [raw(f"night1/f{i}.fits", FILTER="R" if i % 2 else "V") for i in range(5)]
    await store.upsert_raw_files(files)
    assert await store.count_raw_files() == 5
    assert await store.all_raw_files() == sorted(files, key=lambda f: f.path)
    doc = await store.raw_files.find_one({"header.FILTER": "R"})  # a queryable sub-document
    assert doc is not None and doc["_id"] == doc["file_id"]
    stats = await store.raw_file_stats()
    assert stats == {f.path: (5760, 1_700_000_000_000_000_000) for f in files}


async def test_upsert_replaces_by_path(store: Store) -> None:
    await store.upsert_raw_files([raw("a.fits"), raw("b.fits")])
    changed = raw("a.fits", size=11520, IMAGETYP="flat")
    await store.upsert_raw_files([changed, raw("c.fits")])
    assert await store.count_raw_files() == 3
    assert (await store.raw_files_by_id([changed.file_id]))[0] == changed


async def test_upsert_when_the_authority_changes(store: Store) -> None:
    await store.upsert_raw_files([raw("a.fits", authority="old.org")])
    moved = raw("a.fits", authority="new.org")
    await store.upsert_raw_files([moved])
    assert await store.all_raw_files() == [moved]


async def test_raw_files_by_id_keeps_order_and_skips_unknown(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "MATCH_CHUNK", 7)
    files = [raw(f"f{i:03d}.fits") for i in range(30)]
    await store.upsert_raw_files(files)
    wanted = [files[i].file_id for i in (29, 3, 17, 3)] + ["ivo://test.org/raw?nope"]
    assert [f.path for f in await store.raw_files_by_id(wanted)] == [
        "f029.fits",
        "f003.fits",
        "f017.fits",
    ]
    assert len(await store.raw_files_by_id(f.file_id for f in files)) == 30


async def test_delete_raw_files_in_chunks(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "IN_CHUNK", 4)
    await store.upsert_raw_files([raw(f"f{i}.fits") for i in range(10)])
    removed = await store.delete_raw_files([f"f{i}.fits" for i in range(9)] + ["nope.fits"])
    assert removed == 9
    assert [f.path for f in await store.all_raw_files()] == ["f9.fits"]
    assert await store.delete_raw_files([]) == 0


async def test_integers_beyond_64_bits_become_strings(store: Store) -> None:
    await store.upsert_raw_files([raw("big.fits", BIG=2**70, SMALL=-(2**63))])
    (stored,) = await store.all_raw_files()
    assert stored.header["BIG"] == str(2**70)
    assert stored.header["SMALL"] == -(2**63)


async def test_problems_are_listed(store: Store) -> None:
    bad = RawFile(raw_file_id("bad.fits"), "bad.fits", problem="empty file")
    await store.upsert_raw_files([raw("good.fits"), bad])
    assert await store.raw_files_with_problems() == [("bad.fits", "empty file")]


async def test_saved_listing_is_trusted_only_until_the_next_write(store: Store) -> None:
    await store.upsert_raw_files([raw("a.fits"), raw("b.fits")])
    listing = await store.raw_listing()
    assert not listing.cached and set(listing.files) == {"a.fits", "b.fits"}
    assert await store.save_raw_listing(listing.files, listing.version)

    again = await store.raw_listing()
    assert again.cached and again.files == listing.files
    assert again.files["a.fits"] == RawFileState(5760, 1_700_000_000_000_000_000, None)

    await store.delete_raw_files(["b.fits"])  # any write invalidates the saved listing
    after = await store.raw_listing()
    assert not after.cached and set(after.files) == {"a.fits"}
    assert after.version == listing.version + VERSION_STEPS  # before and after the write
    assert not await store.save_raw_listing(listing.files, listing.version)  # stale
    assert not (await store.raw_listing()).cached
    # a stale save leaves no parts behind; a good one removes older generations
    assert await store.save_raw_listing(after.files, after.version)
    assert await store.save_raw_listing(after.files, after.version)
    assert await store.db["raw_listing"].count_documents({}) == 2  # state + one part


async def test_dropping_raw_files_invalidates_the_listing(store: Store) -> None:
    await store.upsert_raw_files([raw("a.fits")])
    listing = await store.raw_listing()
    assert await store.save_raw_listing(listing.files, listing.version)
    await store.db.drop_collection("raw_files")  # bypasses the version
    after = await store.raw_listing()
    assert not after.cached and after.files == {}
    await store.ensure_indexes()
    assert not (await store.raw_listing()).cached


async def test_listing_of_an_empty_index(store: Store) -> None:
    assert await store.raw_files_version() == 0
    assert await store.save_raw_listing({}, 0)
    listing = await store.raw_listing()
    assert listing.cached and listing.files == {}


async def test_listing_in_several_parts(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "LISTING_PART", 3)
    files = [raw(f"f{i:02d}.fits") for i in range(10)]
    await store.upsert_raw_files(files)
    listing = await store.raw_listing()
    assert await store.save_raw_listing(listing.files, listing.version)
    again = await store.raw_listing()
    assert again.cached and again.files == listing.files and len(again.files) == 10


# -- the embedded server ---------------------------------------------------


async def test_embedded_data_persists_across_restarts(tmp_path: Path) -> None:
    server = EmbeddedMongo(tmp_path / "mongo")
    async with server:
        assert server.url.startswith("mongodb://127.0.0.1:")
        assert server.url.endswith("/?directConnection=true")
        db = Store.connect(server.url, "persist")
        await db.ensure_indexes()
        await db.upsert_raw_files([raw("kept.fits")])
        await db.close()
        pid = server.pid
    assert not server.running and pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert server.log_path.parent == tmp_path and server.log_path.stat().st_size > 0
    async with EmbeddedMongo(tmp_path / "mongo") as again:
        db = Store.connect(again.url, "persist")
        assert [f.path for f in await db.all_raw_files()] == ["kept.fits"]
        await db.close()


def fake_server(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-secantusd"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


async def test_embedded_reports_a_server_that_dies(tmp_path: Path) -> None:
    executable = fake_server(tmp_path, "echo 'boom: storage is locked' >&2; exit 3")
    server = EmbeddedMongo(tmp_path / "db", executable=executable, startup_timeout=5)
    with pytest.raises(EmbeddedMongoError, match="boom: storage is locked"):
        await server.start()
    assert not server.running


async def test_embedded_kills_a_server_that_never_answers(tmp_path: Path) -> None:
    ignore_term = (
        f"exec {sys.executable} -c 'import signal, time; "
        'signal.signal(signal.SIGTERM, signal.SIG_IGN); print("deaf", flush=True); '
        "time.sleep(60)'"
    )
    server = EmbeddedMongo(
        tmp_path / "db",
        executable=fake_server(tmp_path, ignore_term),
        startup_timeout=1,
        stop_timeout=0.5,
    )
    with pytest.raises(EmbeddedMongoError, match="did not answer ping"):
        await server.start()
    assert not server.running


async def test_embedded_missing_executable(tmp_path: Path) -> None:
    server = EmbeddedMongo(tmp_path / "db", executable=str(tmp_path / "nothing-here"))
    with pytest.raises(EmbeddedMongoError, match="cannot run"):
        await server.start()


async def test_open_store_embedded_and_by_url(tmp_path: Path, mongo: EmbeddedMongo) -> None:
    # a command's store (a keeper's, no linger: it stops with this block)
    settings = Settings(data_dir=tmp_path / "data", database="open_store_test", store_linger_s=0)
    async with open_store(settings) as db:
        await db.upsert_raw_files([raw("x.fits")])
        info = await db.raw_files.index_information()
        assert "path_unique" in info
    data = tmp_path / "data"  # restarts: see the persistence test
    assert (data / "mongo").is_dir()
    assert (data / "mongo.log").is_file() and (data / "mongo.secantusd.toml").is_file()

    by_url = settings.with_(mongo_url=mongo.url, database="open_store_url_test")
    async with open_store(by_url) as db:
        assert await db.count_raw_files() == 0
        await db.drop()


def test_embedded_server_dies_with_a_killed_service(tmp_path: Path) -> None:
    """SIGKILL of the service must not leave the server holding the storage lock."""
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from soda_reduce.runtime.store import EmbeddedMongo\n"
        "async def main():\n"
        f"    server = await EmbeddedMongo(Path({str(tmp_path / 'db')!r})).start()\n"
        "    print(server.pid, flush=True)\n"
        "    await asyncio.sleep(120)\n"
        "asyncio.run(main())\n"
    )
    service = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert service.stdout is not None
    server_pid = int(service.stdout.readline())
    service.send_signal(signal.SIGKILL)
    service.wait(timeout=30)
    deadline = time.monotonic() + 20
    alive = True
    while time.monotonic() < deadline and alive:
        try:
            os.kill(server_pid, 0)
            with open(f"/proc/{server_pid}/stat") as stat:
                alive = stat.read().split()[2] != "Z"
        except (ProcessLookupError, FileNotFoundError):
            alive = False
        time.sleep(0.2)
    assert not alive, "the embedded server outlived its service"
