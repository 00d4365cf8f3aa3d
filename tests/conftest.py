"""Shared fixtures: one real SecantusDB server for the session, a fresh database per test.

Store and indexer tests talk to a real server over a socket, never to a mock:
the point is to catch what the wire, the driver and the server really do.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from soda_reduce.runtime.store import EmbeddedMongo, Store


@pytest.fixture(scope="session", autouse=True)
def command_line_defaults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Commands run inside the tests (``soda_reduce.cli.main``) keep their default data
    directory out of the real home, and their store keeper stops with its last user."""
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))
    patch.setenv("SODA_REDUCE_STORE_LINGER_S", "0")
    try:
        yield
    finally:
        patch.undo()


@pytest.fixture(scope="session")
async def mongo(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedMongo]:
    """One embedded server for the whole session (starting one takes ~0.6 s)."""
    server = EmbeddedMongo(tmp_path_factory.mktemp("secantus") / "db")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def store(mongo: EmbeddedMongo) -> AsyncIterator[Store]:
    """A store on a database of its own, indexes ensured, dropped afterwards."""
    db = Store.connect(mongo.url, f"test_{uuid.uuid4().hex[:12]}")
    await db.ensure_indexes()
    try:
        yield db
    finally:
        await db.drop()
        await db.close()


@pytest.fixture(scope="session")
def demo_archive(tmp_path_factory: pytest.TempPathFactory):
    """A small demo archive shared by the service tests (read-only for them)."""
    from soda_reduce.pipelines.ccd.demo import generate_demo_archive

    root = tmp_path_factory.mktemp("demo") / "archive"
    generate_demo_archive(root, nights=3, science_per_night=2, size=64)
    return root
