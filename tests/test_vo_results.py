"""The products result VOTable: values and nulls read back with astropy, votlint, VOTable XSD."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io.votable import parse
from lxml import etree

from soda_reduce.vo import results
from soda_reduce.vo.results import PRODUCTS_MEDIA_TYPE, ProductRow, render_products_votable
from tests.support.tools import missing
from tests.support.tools import stilts as find_stilts
from tests.test_vo_uws import SCHEMA_DIR

BASE = "https://archive.example.org"
ROWS = [
    ProductRow(
        id="ivo://example/products?k1/master_bias.fits",
        access_url=f"{BASE}/products/k1/master_bias.fits",
        category="MASTER_BIAS",
        task="master_bias",
        content_type="application/fits",
        size=1_234_567_890_123,
        datalink_url=f"{BASE}/datalink?ID=ivo%3A%2F%2Fexample%2Fproducts%3Fk1",
        dataset="NGC 1234 R 2024-01-05",
        step_key="k1" * 32,
        main=True,
    ),
    ProductRow(
        id="ivo://example/products?k2/preview.png",
        access_url=f"{BASE}/products/k2/preview.png?a=1&b=<2>",
        category="PREVIEW",
        task="science",
        content_type="image/png",
        size=None,
        datalink_url="",
        dataset="M 31 – Andromeda",  # non-ASCII label: unicodeChar column
        step_key="k2" * 32,
        main=False,
        semantics="#preview",
    ),
]


def _table(data: bytes):  # type: ignore[no-untyped-def]
    votable = parse(io.BytesIO(data))
    assert votable.version == "1.4"
    return votable, votable.get_first_table()


def test_values_and_nulls_read_back() -> None:
    data = render_products_votable(ROWS, job_id="j42", info={"pipeline": "ccd", "target": "sci"})
    votable, table = _table(data)
    resource = votable.resources[0]
    assert resource.type == "results"
    infos = {i.name: i.value for i in resource.infos}
    assert infos == {"QUERY_STATUS": "OK", "job_id": "j42", "pipeline": "ccd", "target": "sci"}
    fields = {f.name: f for f in table.fields}
    assert list(fields) == [
        "ID", "access_url", "semantics", "category", "task", "content_type", "content_length",
        "datalink_url", "dataset", "step_key", "main",
    ]  # fmt: skip
    assert fields["ID"].ucd == "meta.id;meta.main"
    assert fields["access_url"].ucd == "meta.ref.url"
    assert fields["content_type"].ucd == "meta.code.mime"
    assert fields["content_length"].datatype == "long"
    assert str(fields["content_length"].unit) == "byte"
    assert fields["content_length"].ucd == "phys.size;meta.file"
    assert fields["main"].datatype == "boolean"
    assert all(f.arraysize == "*" for f in fields.values() if "char" in f.datatype.lower())
    assert all(f.description for f in fields.values())

    arr = table.array
    assert len(arr) == 2
    assert list(arr["ID"]) == [r.id for r in ROWS]
    assert arr["access_url"][1] == f"{BASE}/products/k2/preview.png?a=1&b=<2>"
    assert list(arr["category"]) == ["MASTER_BIAS", "PREVIEW"]
    assert list(arr["semantics"]) == ["#this", "#preview"]
    assert arr["content_length"][0] == 1_234_567_890_123  # does not fit in an int32
    assert not arr["content_length"].mask[0] and arr["content_length"].mask[1]
    assert list(arr["main"]) == [True, False]
    assert arr["dataset"][1] == "M 31 – Andromeda"
    assert arr["step_key"][0] == "k1" * 32
    # the astropy Table view, as a pyvo user sees it
    t = table.to_table()
    assert np.ma.is_masked(t["content_length"][1])
    assert t["content_type"][0] == "application/fits"


def test_empty_table_is_still_a_table() -> None:
    _, table = _table(render_products_votable([], job_id="j0"))
    assert len(table.array) == 0
    assert len(table.fields) == len(results.COLUMNS)


def test_validates_against_votable_xsd() -> None:
    xsd = SCHEMA_DIR / "VOTable-v1.4.xsd"
    if not xsd.is_file():
        missing(f"VOTable 1.4 XSD not found at {xsd}")
    schema = etree.XMLSchema(etree.parse(str(xsd)))
    for rows in (ROWS, []):
        data = render_products_votable(rows, job_id="j42", info={"a b": "c", "ID": "x"})
        assert schema.validate(etree.fromstring(data)), str(schema.error_log)


@pytest.mark.parametrize("rows", [ROWS, []], ids=["rows", "empty"])
def test_passes_votlint(rows: list[ProductRow], tmp_path: Path) -> None:
    stilts = find_stilts()
    path = tmp_path / "products.vot"
    path.write_bytes(render_products_votable(rows, job_id="j42", info={"pipeline": "ccd"}))
    proc = subprocess.run(
        [stilts, "votlint", f"votable={path}"], capture_output=True, text=True, timeout=120
    )
    report = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0, report
    assert report == "", report  # votlint is silent when it has nothing to say


def test_rejects_what_would_make_an_invalid_document() -> None:
    with pytest.raises(ValueError, match="ASCII"):
        ProductRow(
            "ivo://x?é", "https://x/a", "BIAS", "t", "application/fits", 1, "", "d", "k", True
        )
    with pytest.raises(ValueError, match="size"):
        ProductRow(
            "ivo://x?a", "https://x/a", "BIAS", "t", "application/fits", -1, "", "", "", True
        )
    with pytest.raises(ValueError, match="reserved"):
        render_products_votable([], job_id="j", info={"QUERY_STATUS": "ERROR"})
    # control characters cannot go into XML at all; they are replaced, not written raw
    row = ProductRow(
        "ivo://x?a", "https://x/a", "BIAS", "t", "text/plain", 1, "", "d\x01", "", True
    )
    _, table = _table(render_products_votable([row], job_id="j\x02"))
    assert table.array["dataset"][0] == "d\ufffd"


def test_rows_of_any_length_do_not_corrupt_memory() -> None:
    """Regression: astropy's C TABLEDATA writer overruns its buffer by one byte when a row is
    exactly 256/512/1024... bytes long. Rows of every length from ~230 to ~1400 bytes are
    written in a child process whose debug allocator aborts on any such overrun.
    """
    script = (
        "from soda_reduce.vo.results import ProductRow, render_products_votable\n"
        "rows = [ProductRow('ivo://x?a', 'https://x/a', 'B', 't', 'text/plain', 1, '',"
        " 'd' * n, 'k', True) for n in range(1200)]\n"
        "assert render_products_votable(rows, job_id='j').count(b'<TR>') == 1200\n"
    )
    env = {**os.environ, "PYTHONMALLOC": "debug"}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_media_type() -> None:
    assert PRODUCTS_MEDIA_TYPE == "application/x-votable+xml"
