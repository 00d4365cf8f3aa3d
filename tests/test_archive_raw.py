"""/archive/raw: the indexed raw files as a VOTable, checked against the demo archive's truth.

The demo archive writes its frames with several header conventions (EXPTIME or EXPOSURE,
XBINNING/YBINNING or CCDSUM, upper- or lower-case IMAGETYP...) and records what each file
really is in _truth/manifest.json: every row is compared with that record, so the cascade's
derived keywords are what the table shows. Every document passes STILTS votlint, and pyvo
builds and runs the DataLink query of a row from the table's service descriptor, and the
SODA query of a row (its frame as archived) from the other.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from astropy.io.votable import parse
from astropy.table import Table

from soda_reduce.config import Settings
from soda_reduce.runtime.store import Store
from soda_reduce.vo.archive_table import COLUMNS, HARD_MAXREC, RawQuery, parse_raw_query
from soda_reduce.vo.dali import UsageError
from tests.support.tools import stilts as _stilts
from tests.support.uws_harness import Harness, uws_service
from tests.test_uws_clients import NO_NETWORK, _run


@pytest.fixture
async def svc(store: Store, demo_archive: Path, tmp_path: Path) -> AsyncIterator[Harness]:
    settings = Settings(data_dir=tmp_path, archive_dir=demo_archive)
    async with uws_service(store, demo_archive, tmp_path, settings=settings, worker=False) as h:
        yield h


@pytest.fixture(scope="module")
def truth(demo_archive: Path) -> dict[str, dict[str, Any]]:
    manifest = json.loads((demo_archive / "_truth" / "manifest.json").read_text())
    return {record["path"]: record for record in manifest["files"]}


def _votlint(path: Path) -> str:
    code, report = _run([_stilts(), *NO_NETWORK, "votlint", f"votable={path}"], timeout=120)
    assert code == 0, report
    return report


async def _table(
    h: Harness, query: str = "", tmp_path: Path | None = None
) -> tuple[Table, str, bytes]:
    """The rows, QUERY_STATUS and the raw document; votlint'ed when tmp_path is given."""
    response = await h.client.get(f"/archive/raw{query}")
    body = await response.read()
    assert response.status == 200, body.decode()
    assert response.content_type == "application/x-votable+xml"
    if tmp_path is not None:
        path = tmp_path / "raw.xml"
        path.write_bytes(body)
        report = _votlint(path)
        assert "ERROR" not in report and "WARNING" not in report, report
    votable = parse(io.BytesIO(body))
    (status,) = [i for i in votable.resources[0].infos if i.name == "QUERY_STATUS"]
    return votable.get_first_table().to_table(), status.value, body


def _cell(value: Any) -> Any:
    """A masked or empty cell as None (VOTable writes a null char cell as an empty TD)."""
    if value is None or np.ma.is_masked(value) or value == "":
        return None
    return value


async def test_rows_are_the_archive_with_derived_keywords(
    svc: Harness, truth: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    table, status, _ = await _table(svc, tmp_path=tmp_path)
    assert status == "OK"
    assert table.colnames == [c.name for c in COLUMNS]
    assert sorted(table["path"]) == sorted(truth) and len(table) == len(truth)
    assert list(table["path"]) == sorted(table["path"])

    headers = {raw.path: raw.header for raw in await svc.runtime.store.all_raw_files()}
    conventions = Counter()
    for row in table:
        record, header = truth[row["path"]], headers[row["path"]]
        assert row["ID"] == f"ivo://example.org/raw?{row['path']}"
        assert row["datalink_url"] == f"{svc.base}/datalink?ID={quote(row['ID'], safe='')}"
        if record["malformed"]:  # unreadable or unclassifiable: no category
            assert _cell(row["category"]) is None, row
            continue
        conventions["EXPOSURE" if "EXPTIME" not in header else "EXPTIME"] += 1
        conventions["CCDSUM" if "CCDSUM" in header else "XBINNING"] += 1
        assert row["category"] == record["category"]
        assert row["night"] == record["night"]
        assert row["exptime"] == pytest.approx(record["exptime"])
        assert row["binning"] == f"{record['binning']}x{record['binning']}"
        assert row["date_obs"] == record["date_obs"][:19]
        assert _cell(row["object"]) == record["object"]
        assert row["instrument"] == "DEMOCAM"
        if record["filter"] is not None:
            assert row["filter"] == record["filter"]
    # the comparison covered every convention the demo archive uses
    assert min(conventions.values()) > 0 and len(conventions) == 4, conventions
    problems = [p for p, r in truth.items() if r["problem"] and r["malformed"] != "unclassifiable"]
    for row in table:
        if row["path"] in problems:
            assert all(_cell(row[c]) is None for c in ("instrument", "night", "exptime")), row


async def test_filters(svc: Harness, truth: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    def expected(**want: str | tuple[str, ...]) -> list[str]:
        def ok(record: dict[str, Any]) -> bool:
            for key, value in want.items():
                values = value if isinstance(value, tuple) else (value,)
                if record["malformed"] or record[key] not in values:
                    return False
            return True

        return sorted(p for p, r in truth.items() if ok(r))

    table, status, _ = await _table(svc, "?category=BIAS&Night=2024-01-05", tmp_path)
    assert status == "OK"
    assert sorted(table["path"]) == expected(category="BIAS", night="2024-01-05")
    assert len(table) > 0

    table, _, _ = await _table(svc, "?CATEGORY=FLAT&CATEGORY=DARK")  # repeated: any of them
    assert sorted(table["path"]) == expected(category=("FLAT", "DARK"))

    table, _, _ = await _table(svc, "?OBJECT=NGC%202244")
    assert sorted(table["path"]) == expected(object="NGC 2244") and len(table) >= 2

    table, _, _ = await _table(svc, "?instrument=DEMOCAM&category=SCIENCE&night=2024-01-06")
    assert sorted(table["path"]) == expected(category="SCIENCE", night="2024-01-06")

    # values are exact: case matters, and no match is an empty table, not an error
    table, status, _ = await _table(svc, "?CATEGORY=bias", tmp_path)
    assert len(table) == 0 and status == "OK"
    table, _, _ = await _table(svc, "?INSTRUMENT=OTHERCAM")
    assert len(table) == 0


async def test_maxrec_overflow(
    svc: Harness, truth: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    biases = sorted(p for p, r in truth.items() if r["category"] == "BIAS")
    table, status, _ = await _table(svc, "?CATEGORY=BIAS&MAXREC=3", tmp_path)
    assert status == "OVERFLOW"
    assert list(table["path"]) == biases[:3]

    table, status, _ = await _table(svc, f"?CATEGORY=BIAS&MAXREC={len(biases)}")
    assert status == "OK" and len(table) == len(biases)

    table, status, _ = await _table(svc, "?MAXREC=0", tmp_path)
    assert status == "OVERFLOW" and len(table) == 0


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("?MAXREC=many", "MAXREC must be an integer"),
        ("?MAXREC=-1", "MAXREC must be >= 0"),
        ("?MAXREC=1&maxrec=2", "MAXREC given 2 times"),
        ("?RESPONSEFORMAT=text/csv", "only VOTable"),
    ],
)
async def test_bad_parameters_are_dali_errors(svc: Harness, query: str, message: str) -> None:
    response = await svc.client.get(f"/archive/raw{query}")
    assert response.status == 400
    votable = parse(io.BytesIO(await response.read()))
    (info,) = votable.resources[0].infos
    assert info.name == "QUERY_STATUS" and info.value == "ERROR"
    assert message in info.content


async def test_post_and_datalink_descriptor(svc: Harness) -> None:
    from pyvo.dal.adhoc import DATALINK_IVOID, SODA_SYNC_IVOID, DatalinkQuery, SodaQuery
    from pyvo.dal.tap import TAPResults

    response = await svc.client.post("/archive/raw", data={"CATEGORY": "SCIENCE", "MAXREC": "2"})
    assert response.status == 200
    results = TAPResults(parse(io.BytesIO(await response.read())))
    assert len(results) == 2
    descriptor = results.get_adhocservice_by_ivoid(DATALINK_IVOID)
    for row in results:
        query = DatalinkQuery.from_resource(row, descriptor)
        assert query.baseurl == f"{svc.base}/datalink"
        assert dict(query) == {"ID": row["ID"]}
    # and the client follows it: the links of the file, with its "reduce this" descriptor
    links = await asyncio.to_thread(DatalinkQuery.from_resource(results[0], descriptor).execute)
    assert set(links.to_table()["ID"]) == {results[0]["ID"]}
    assert links.get_first_proc() is not None
    # a SODA sync descriptor on the same column cuts a row's frame as archived
    # (tests/test_datalink.py runs pyvo's record.processed() through it)
    soda = results.get_adhocservice_by_ivoid(SODA_SYNC_IVOID)
    for row in results:
        query = SodaQuery.from_resource(row, soda)
        assert query.baseurl == f"{svc.base}/soda/sync"
        assert dict(query) == {"ID": row["ID"], "TARGET": "raw"}


def test_parse_raw_query() -> None:
    query = parse_raw_query([("object", "M67"), ("Object", "M 67"), ("MAXREC", str(10**9))])
    assert query == RawQuery({"OBJECT": frozenset({"M67", "M 67"})}, HARD_MAXREC)
    assert parse_raw_query({"RESPONSEFORMAT": "application/x-votable+xml"}).filters == {}
    with pytest.raises(UsageError):
        parse_raw_query({"RESPONSEFORMAT": "application/json"})
