"""One owner per collection: nothing outside a collection's owners touches PyMongo or it.

The owners are listed in ``runtime/collection_owners.py`` (docs/store.md says the same);
this walks the syntax tree of every module of ``soda_reduce/`` and fails on

- an import of ``pymongo`` outside the store package and the owners;
- a collection attribute (``store.jobs``, ``self.store.products``, ``store.db``...) read
  on a store outside that collection's owners;
- a call of a PyMongo collection method (``insert_one``, ``aggregate``...) outside them.

Each rule is first shown to catch what it is meant to catch, so the test can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

from soda_reduce.runtime.collection_owners import COLLECTIONS, OWNED_INDEXES
from soda_reduce.runtime.store import Store
from soda_reduce.runtime.store.store import JOBS, PRODUCTS, RAW_FILES, STEPS

ROOT = Path(__file__).resolve().parents[1] / "soda_reduce"
STORE_PACKAGE = "runtime/store/"
CATALOGUE = "runtime/collection_owners.py"  # names the owners' indexes
OWNERS = {c.name: set(c.owners) for c in COLLECTIONS}
EVERY_OWNER = set().union(*OWNERS.values())
# attributes of a Store that are collections (or the database they come from)
COLLECTION_ATTRIBUTES = {"jobs": JOBS, "steps": STEPS, "products": PRODUCTS, "raw_files": RAW_FILES}
DATABASE_ATTRIBUTES = {"db", "client"}
# owners of collections the Store has no attribute for reach them through its database
DATABASE_USERS = {
    m for c in COLLECTIONS if c.name not in COLLECTION_ATTRIBUTES.values() for m in c.owners
}
DRIVER_METHODS = {
    "aggregate",
    "bulk_write",
    "count_documents",
    "create_indexes",
    "delete_many",
    "delete_one",
    "estimated_document_count",
    "find_one",
    "find_one_and_update",
    "insert_many",
    "insert_one",
    "replace_one",
    "update_many",
    "update_one",
}


def _is_store(node: ast.expr) -> bool:
    """``store``, ``self.store``, ``services.jobs.store``, ``db_store``: a Store."""
    name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)
    return isinstance(name, str) and (name == "store" or name.endswith("_store"))


def violations(source: str, module: str) -> list[str]:
    """What ``module`` (a path under soda_reduce/) does that only owners may do."""
    if module.startswith(STORE_PACKAGE):
        return []
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names.append(getattr(node, "module", None) or "")
            driver = any(n == "pymongo" or n.startswith("pymongo.") for n in names)
            if driver and module not in EVERY_OWNER | {CATALOGUE}:
                found.append(f"{module}:{line}: imports pymongo")
        elif isinstance(node, ast.Attribute) and _is_store(node.value):
            collection = COLLECTION_ATTRIBUTES.get(node.attr)
            if collection is not None and module not in OWNERS[collection]:
                found.append(f"{module}:{line}: reads the {collection} collection")
            if node.attr in DATABASE_ATTRIBUTES and module not in DATABASE_USERS:
                found.append(f"{module}:{line}: reads the store's {node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in DRIVER_METHODS
            and module not in EVERY_OWNER
        ):
            found.append(f"{module}:{line}: calls {node.func.attr}")
    return found


def test_the_rules_catch_what_they_are_meant_to() -> None:
    module = "web/some_handler.py"
    assert violations("from pymongo.errors import DuplicateKeyError", module)
    assert violations("import pymongo", module)
    assert violations("doc = await services.jobs.store.steps.find({})", module)
    assert violations("await self.store.products.insert_many(docs)", module)
    assert violations("owners = store.db['job_owners']", module)
    assert violations("collection = registry.products\nawait collection.insert_one({})", module)
    assert violations("await store.jobs.find_one({})", "runtime/step_cache.py")  # not its own
    assert not violations("await store.steps.find_one({})", "runtime/step_cache.py")
    assert not violations("await store.raw_files_by_id(ids)\nservices.jobs.jobs.list()", module)
    assert not violations("import pymongo", "runtime/store/embedded.py")


def test_only_owners_touch_pymongo_and_collections() -> None:
    modules = sorted(ROOT.rglob("*.py"))
    assert len(modules) > 50
    found = []
    for path in modules:
        module = path.relative_to(ROOT).as_posix()
        found += violations(path.read_text(encoding="utf-8"), module)
    assert not found, "\n".join(found)


def test_every_owner_exists() -> None:
    for module in EVERY_OWNER:
        assert (ROOT / module).is_file(), module


async def test_the_store_creates_every_owners_indexes(store: Store) -> None:
    await store.ensure_indexes()  # the fixture already did it once: safe again
    for name, models in OWNED_INDEXES.items():
        info = await store.db[name].index_information()
        for model in models:
            assert model.document["name"] in info, (name, model.document["name"])
