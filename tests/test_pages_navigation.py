"""The pages an astronomer navigates by: job list -> job page -> product page -> raw page.

HTTP-level tests read the pages of the real service (SecantusDB over a socket, the worker
running the ccd recipes on the demo archive) and follow every link they assert on; the
browser test walks the same path in headless Chromium, and back.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from astropy.io import fits

from soda_reduce.pipelines import registry
from soda_reduce.runtime.archive_plans import ArchivePipelines
from soda_reduce.runtime.product_records import ProductRecords
from soda_reduce.runtime.product_view import MAX_HDUS, fits_outline
from soda_reduce.runtime.public_text import PublicText
from soda_reduce.runtime.store import Store
from soda_reduce.web import job_rows
from soda_reduce.web.landing import summarise_landing
from soda_reduce.web.middleware import AuthConfig
from tests.support.browser import chromium, in_thread, text_of, wait_for
from tests.support.uws_harness import Harness, uws_service

ALICE = {"X-Remote-User": "alice"}
BOB = {"X-Remote-User": "bob"}
PAGE_LINK = re.compile(r'class="product-page" href="(/products/[0-9a-f]{64}/[^"/]+/page)"')


@pytest.fixture
async def svc(store: Store, demo_archive: Path, tmp_path: Path) -> AsyncIterator[Harness]:
    auth = AuthConfig(trusted_header="X-Remote-User")
    async with uws_service(store, demo_archive, tmp_path, auth=auth) as harness:
        yield harness


def _raw_id(svc: Harness, path: str) -> str:
    return svc.complete_id.split("?", 1)[0] + "?" + path


def _path(file_id: str) -> str:
    return file_id.split("?", 1)[1]


async def _get(svc: Harness, url: str, headers: dict[str, str] | None = None, status=200):
    response = await svc.client.get(url, headers=headers)
    body = (await response.read()).decode("utf-8", "replace")
    assert response.status == status, (url, body[:2000])
    return response, body


async def _page(svc: Harness, url: str, headers: dict[str, str] | None = None, status=200):
    response, body = await _get(svc, url, headers, status)
    assert response.content_type == "text/html", url
    return body


async def _create(svc: Harness, data: list[tuple[str, str]], headers: dict[str, str]) -> str:
    return await svc.create(data, headers=headers)


async def _finish(svc: Harness, job_id: str, headers: dict[str, str]) -> None:
    for _ in range(12):  # at most 12 x WAIT=10 s
        response = await svc.client.get(f"/jobs/{job_id}/status.json", headers=headers)
        status = await response.json()
        if status["final"]:
            assert status["phase"] == "COMPLETED", status
            return
        await svc.client.get(f"/soda/async/{job_id}?WAIT=10", headers=headers)
    raise AssertionError(f"job {job_id} not final")


def _server_paths(svc: Harness) -> list[str]:
    settings = svc.runtime.settings
    roots = [svc.archive, settings.data_dir, svc.runtime.products.root]
    return [str(Path(r).resolve()) for r in roots] + [str(r) for r in roots]


def _no_server_paths(svc: Harness, body: str, where: str) -> None:
    for root in _server_paths(svc):
        assert root not in body, (where, root)


# ----------------------------------------------------------------- the job list


async def test_job_list_names_raw_files_object_setup_target_and_age(svc: Harness) -> None:
    job_id = await _create(
        svc, [("ID", svc.complete_id), ("TARGET", "science"), ("RUNID", "<b>m67</b>")], ALICE
    )
    page = await _page(svc, "/jobs", ALICE)
    row = re.search(rf'<tr class="job-row" data-job-id="{job_id}">(.*?)</tr>', page, re.S)
    assert row, page
    cells = row.group(1)
    raw_url = "/raw/" + quote(_path(svc.complete_id))
    assert f'class="raw-link" href="{raw_url}">{_path(svc.complete_id)}<' in cells
    assert '<td class="object">M67</td>' in cells
    assert "FILTER=R" in cells and "BINNING=1x1" in cells  # the ccd cascade's setup
    assert '<td class="target">science</td>' in cells
    assert "&lt;b&gt;m67&lt;/b&gt;" in cells and "<b>m67</b>" not in cells  # escaped
    stamp = re.search(r'<time datetime="([^"]+)" title="\1">([^<]+)</time>', cells)
    assert stamp and stamp.group(2) in ("just now", "1 min ago"), cells
    created = datetime.fromisoformat(stamp.group(1))
    assert abs((datetime.now(UTC) - created).total_seconds()) < 120
    (await _page(svc, raw_url, ALICE)).index(svc.complete_id)  # the link leads to its page
    assert job_id not in await _page(svc, "/jobs", BOB)  # the caller's jobs only


async def test_job_list_pages_back_in_time_through_shared_milliseconds(
    svc: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_rows, "JOB_PAGE_SIZE", 2)
    made = [await _create(svc, [("ID", svc.complete_id)], ALICE) for _ in range(5)]
    bobs = await _create(svc, [("ID", svc.complete_id)], BOB)
    # three jobs created in one millisecond: a page boundary falls among them
    same = datetime.now(UTC).replace(microsecond=123000)
    await svc.runtime.store.jobs.update_many(
        {"job_id": {"$in": made[1:4]}}, {"$set": {"creation_time": same}}
    )
    seen: list[str] = []
    url: str | None = "/jobs"
    for _ in range(5):  # 3 pages expected
        if url is None:
            break
        page = await _page(svc, url, ALICE)
        rows = re.findall(r'<tr class="job-row" data-job-id="([^"]+)">', page)
        assert 1 <= len(rows) <= 2, page
        seen += rows
        older = re.search(r'<a id="older" href="([^"]+)">', page)
        url = unescape(older.group(1)) if older else None
    assert url is None and len(seen) == 5 and sorted(seen) == sorted(made), seen
    assert bobs not in seen
    # a cursor of someone else's job shows nothing of theirs; malformed ones are a 400 page
    bad = await _page(svc, "/jobs?before=yesterday&before_id=x", ALICE, status=400)
    assert "ISO 8601" in bad and 'id="error-message"' in bad
    bad = await _page(svc, "/jobs?before=2024-01-01T00:00:00Z", ALICE, status=400)
    assert "before_id" in bad
    late = quote("2099-01-01T00:00:00Z")
    page = await _page(svc, f"/jobs?before={late}&before_id={bobs}", ALICE)
    assert bobs not in page and len(re.findall(r'class="job-row"', page)) == 2


# ----------------------------------------------------------------- job, product, raw pages


async def test_job_product_and_raw_pages_tell_how_a_frame_was_reduced(svc: Harness) -> None:
    raw_path = _path(svc.complete_id)
    raw_url = "/raw/" + quote(raw_path)
    before = await _page(svc, raw_url)
    assert 'id="already-reduced"' not in before and 'id="made-from"' not in before

    job_id = await _create(svc, [("ID", svc.complete_id), ("PHASE", "RUN")], ALICE)
    await _finish(svc, job_id, ALICE)
    page = await _page(svc, f"/jobs/{job_id}", ALICE)
    _no_server_paths(svc, page, "job page")
    # the raw file requested, linked to its page and its DataLink document
    assert f'class="raw-link" href="{raw_url}">{raw_path}<' in page
    raw_datalink = "/datalink?ID=" + quote(svc.complete_id, safe="")
    assert f'href="{raw_datalink}"' in page
    response, body = await _get(svc, raw_datalink)
    assert "votable" in response.content_type and svc.complete_id in body
    # the dataset's quality, association by association, in the text plan's words
    assert "quality level 0</span> (same night and setup)" in page
    for category in ("MASTER_BIAS", "MASTER_DARK", "MASTER_FLAT"):
        assert f"<td>{category}</td><td>level 0 (same night)</td>" in page
    # provenance: every step with its group keys, inputs and what it made
    steps = re.findall(r'<tr class="step-row step-done" id="step-(\w+-[0-9a-f]+)">', page)
    assert [s.split("-")[0] for s in steps] == ["bias", "dark", "flat", "science"]
    assert '<span class="key">NIGHT=2024-01-04</span>' in page
    assert '<span class="key">FILTER=R</span>' in page
    # products: each row names its step and group keys, its QC, and links to its page
    rows = re.findall(r'<tr class="product-row[^"]*"(.*?)</tr>', page, re.S)
    assert len(rows) == 4, rows
    assert all("READ_NOISE_E" in r for r in rows if "master_bias.fits" in r)
    assert any("SKY_MEDIAN" in r and "M67_R_1x1_001_reduced.fits" in r for r in rows)
    pages = sorted(set(PAGE_LINK.findall(page)))
    assert len(pages) == 4, pages
    for url in pages:
        _no_server_paths(svc, await _page(svc, url), url)

    science = next(u for u in pages if "_reduced.fits" in u)
    product = await _page(svc, science)
    assert '<dd id="product-category">REDUCED_SCIENCE (main product)</dd>' in product
    assert "recipe ccd.science v1" in product
    assert "<td>PRIMARY</td><td>PrimaryHDU</td><td>64 x 64</td>" in product
    assert "<th>PROCATG</th><td><code>REDUCED_SCIENCE</code></td>" in product
    assert re.search(r"<code>SKY_MEDIAN</code></th><td class=\"num\">[0-9.]+</td>", product)
    # progenitor: the raw frame, linked; calibrations: their own product pages
    progenitors = re.search(r'<ul id="progenitors">(.*?)</ul>', product, re.S).group(1)
    assert f'href="{raw_url}"' in progenitors
    calibrations = PAGE_LINK.findall(
        re.search(r'<ul id="calibrations">(.*?)</ul>', product, re.S).group(1)
    )
    assert {u.rsplit("/", 2)[1] for u in calibrations} == {
        "master_bias.fits",
        "master_dark.fits",
        "master_flat.fits",
    }
    assert set(calibrations) <= set(pages)
    assert "bias_1x1_001.fits.gz" in re.search(r'<ul id="behind">(.*?)</ul>', product, re.S).group(
        1
    )
    for element, kind in (
        ("download", "application/fits"),
        ("datalink", "application/x-votable+xml"),
        ("log", "text/plain"),
        ("product-preview", "image/png"),
    ):
        match = re.search(rf'id="{element}" (?:href|src)="([^"]+)"', product)
        assert match, element
        response, _ = await _get(svc, unescape(match.group(1)))
        assert response.content_type.startswith(kind.split(";")[0]) or (
            element == "datalink" and "votable" in response.content_type
        ), (element, response.content_type)

    # the raw page now says it was reduced, and by which product
    after = await _page(svc, raw_url)
    reduced = re.search(r'<p class="ok" id="already-reduced">(.*?)</p>', after, re.S)
    assert reduced and "Already reduced to science" in reduced.group(1)
    assert PAGE_LINK.findall(reduced.group(1)) == [science]
    bias_page = await _page(svc, "/raw/" + quote("2024-01-04/bias_1x1_001.fits.gz"))
    for url, body in (("/", await _page(svc, "/")), (raw_url, after), ("bias", bias_page)):
        _no_server_paths(svc, body, url)
    _no_server_paths(svc, await _page(svc, "/jobs", ALICE), "/jobs")
    made = re.search(r'<table class="grid" id="made-from">(.*?)</table>', bias_page, re.S)
    assert made and "master_bias.fits" in made.group(1) and "the main input" in made.group(1)
    assert 'id="already-reduced"' in bias_page  # a bias frame's default target is the bias


async def test_two_master_biases_are_told_apart(svc: Harness) -> None:
    ids = [
        _raw_id(svc, "2024-01-04/bias_1x1_001.fits.gz"),
        _raw_id(svc, "2024-01-04/bias_2x2_001.fits"),
    ]
    job_id = await _create(
        svc, [("ID", i) for i in ids] + [("TARGET", "bias"), ("PHASE", "RUN")], ALICE
    )
    await _finish(svc, job_id, ALICE)
    page = await _page(svc, f"/jobs/{job_id}", ALICE)
    rows = re.findall(r'<tr class="product-row[^"]*"(.*?)</tr>', page, re.S)
    biases = [r for r in rows if ">master_bias.fits<" in r]
    assert len(biases) == 2
    binnings = sorted(re.search(r"BINNING=(\w+)", r).group(1) for r in biases)
    assert binnings == ["1x1", "2x2"]
    links = [PAGE_LINK.search(r).group(1) for r in biases]
    assert len(set(links)) == 2  # two steps, two pages
    listing = await _page(svc, "/jobs", ALICE)
    assert "bias_1x1_001.fits.gz" in listing and "bias_2x2_001.fits" in listing
    assert "BINNING=1x1" in listing and "BINNING=2x2" in listing


async def test_product_pages_refuse_unknown_and_malformed_names_as_html(svc: Harness) -> None:
    missing = await _page(svc, f"/products/{'a' * 64}/x.fits/page", status=404)
    assert "no such product" in missing
    for url in (f"/products/{'A' * 64}/x.fits/page", "/products/short/x.fits/page"):
        assert "no such product" in await _page(svc, url, status=404)
    response = await svc.client.post(f"/products/{'a' * 64}/x.fits/page")
    assert response.status == 405 and response.content_type == "text/html"
    # the product file route keeps its VOTable errors
    response = await svc.client.get(f"/products/{'a' * 64}/x.fits")
    assert response.status == 404 and "votable" in response.content_type


async def test_products_made_from_a_raw_file_are_found_through_an_index(store: Store) -> None:
    docs = [
        {
            "product_id": f"{n:064x}/p.fits",
            "step_key": f"{n:064x}",
            "file": "p.fits",
            "inputs": [
                {"file_id": f"ivo://x/raw?f{n}", "role": "main"},
                {"file_id": f"ivo://x/raw?f{n + 1}", "role": "associated"},
                {"step_key": "k", "file_id": None, "role": "associated"},
            ],
        }
        for n in range(50)
    ]
    await store.products.insert_many(docs)
    query = {"inputs.file_id": "ivo://x/raw?f7"}
    plan = (await store.products.find(query).explain())["queryPlanner"]["winningPlan"]
    scan = plan.get("inputStage", plan)
    assert (scan["stage"], scan.get("indexName")) == ("IXSCAN", "input_file"), plan
    records = ProductRecords(store)
    found = await records.made_from("ivo://x/raw?f7", limit=10)
    assert sorted((d["step_key"][-2:], d["role"]) for d in found) == [
        ("06", "associated"),
        ("07", "main"),
    ]
    assert all("inputs" not in d for d in found)
    assert len(await records.made_from("ivo://x/raw?f7", limit=1)) == 1


def test_fits_outline_is_bounded_and_redacts_server_paths(tmp_path: Path) -> None:
    secret = tmp_path / "products" / "steps"
    public = PublicText.of(products=tmp_path / "products")
    primary = fits.PrimaryHDU(np.zeros((4, 6), dtype=np.float32))
    primary.header["WORKDIR"] = str(secret / "x")
    primary.header["HISTORY"] = f"combined in {secret}"
    primary.header["OBJECT"] = "<script>alert(1)</script>"
    hdus = [primary, fits.BinTableHDU.from_columns([fits.Column("A", "E", array=np.ones(3))])]
    hdus += [fits.ImageHDU(np.zeros((2, 2)), name=f"E{n}") for n in range(MAX_HDUS + 2)]
    path = tmp_path / "p.fits"
    fits.HDUList(hdus).writeto(path)
    outline = fits_outline(path, public)
    assert outline.problem is None and outline.more_hdus and len(outline.hdus) == MAX_HDUS
    assert (outline.hdus[0].name, outline.hdus[0].shape) == ("PRIMARY", "6 x 4")
    assert outline.hdus[1].kind == "BinTableHDU" and outline.hdus[1].shape == "3 rows x 1 columns"
    cards = {key: value for key, value, _ in outline.cards}
    assert cards["WORKDIR"] == "$PRODUCTS/steps/x"
    assert cards["HISTORY"] == "combined in $PRODUCTS/steps"
    assert str(tmp_path) not in repr(outline)
    broken = tmp_path / "broken.fits"
    broken.write_bytes(b"SIMPLE  =                    T" + b" " * 50 + b"garbage")
    assert fits_outline(broken, public).problem is not None


def test_landing_redacts_what_a_refused_pipeline_says(tmp_path: Path) -> None:
    pipelines = ArchivePipelines(registry())
    pipelines.registry.refused["broken"] = f"cannot load {tmp_path}/plugin.py: SyntaxError"
    try:
        landing = summarise_landing(pipelines, [], PublicText.of(data=tmp_path))
    finally:
        del pipelines.registry.refused["broken"]
    assert landing.refused == [("broken", "cannot load $DATA/plugin.py: SyntaxError")]


# ----------------------------------------------------------------- headless Chromium


@pytest.fixture
async def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    async with chromium(tmp_path, monkeypatch) as driver:
        yield driver


def _click(driver: Any, selector: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, selector).click()


async def test_browser_walks_job_list_job_product_raw_and_back(
    store: Store, demo_archive: Path, tmp_path: Path, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    async with uws_service(store, demo_archive, tmp_path / "svc") as svc:
        base = svc.base
        raw_path = _path(svc.complete_id)
        # a job of the browser's own session, made with the raw page's form
        await in_thread(driver.get, f"{base}/raw/{quote(raw_path)}")
        assert not driver.find_elements(By.ID, "already-reduced")
        await in_thread(_click, driver, "#reduce-submit")
        await in_thread(
            wait_for, driver, lambda d: re.search(r"/jobs/\w+$", d.current_url), 30, "job page"
        )
        job_id = driver.current_url.rsplit("/", 1)[1]
        await in_thread(
            wait_for,
            driver,
            lambda d: text_of(d, "phase") == "COMPLETED",
            150,
            "COMPLETED",
            timeout=180,
        )

        # the job list: raw file, object, setup, age
        await in_thread(driver.get, f"{base}/jobs")
        row = driver.find_element(By.CSS_SELECTOR, f'tr[data-job-id="{job_id}"]')
        assert row.find_element(By.CSS_SELECTOR, "a.raw-link").text == raw_path
        assert row.find_element(By.CSS_SELECTOR, "td.object").text == "M67"
        assert "FILTER=R" in row.find_element(By.CSS_SELECTOR, "td.setup").text
        age = row.find_element(By.TAG_NAME, "time")
        assert age.text in ("just now", "1 min ago", "2 min ago", "3 min ago")
        assert age.get_attribute("title").endswith("Z")

        # -> the job page: datasets with their quality, products each with a page
        await in_thread(row.find_element(By.CSS_SELECTOR, "a.job-link").click)
        await in_thread(
            wait_for, driver, lambda d: d.find_elements(By.ID, "products"), 30, "products"
        )
        assert driver.current_url == f"{base}/jobs/{job_id}"
        dataset = driver.find_element(By.CSS_SELECTOR, ".dataset h3").text
        assert "complete" in dataset and "quality level 0" in dataset
        target = driver.find_element(By.CSS_SELECTOR, "#products tr.target a.product-page")
        product_file = target.text
        assert product_file.endswith("_reduced.fits")
        shot = tmp_path / "job-page.png"
        assert await in_thread(driver.save_screenshot, str(shot))

        # -> the product page: header, QC, preview decoded, progenitor linked
        await in_thread(target.click)
        await in_thread(
            wait_for, driver, lambda d: text_of(d, "product-file") == product_file, 30, "product"
        )
        assert "PROCATG" in driver.find_element(By.ID, "header").get_attribute("textContent")
        assert "SKY_MEDIAN" in driver.find_element(By.ID, "qc").text
        decoded = await in_thread(
            wait_for,
            driver,
            lambda d: d.execute_script(
                "const i = document.getElementById('product-preview');"
                "return i && i.complete ? i.naturalWidth : 0;"
            ),
            30,
            "the product preview decoded",
        )
        assert decoded > 0
        calibrations = driver.find_elements(By.CSS_SELECTOR, "#calibrations a.product-page")
        assert {a.text for a in calibrations} == {
            "master_bias.fits",
            "master_dark.fits",
            "master_flat.fits",
        }
        shot = tmp_path / "product-page.png"
        assert await in_thread(driver.save_screenshot, str(shot))

        # -> the raw page of its progenitor: already reduced, by this product
        await in_thread(_click, driver, "#progenitors a.raw-link")
        await in_thread(
            wait_for, driver, lambda d: d.find_elements(By.ID, "already-reduced"), 30, "raw page"
        )
        assert text_of(driver, "raw-id") == svc.complete_id
        reduced = driver.find_element(By.CSS_SELECTOR, "#already-reduced a.product-page")
        assert reduced.text == product_file

        # <- back to the product page, <- back to the job page
        await in_thread(driver.back)
        await in_thread(
            wait_for, driver, lambda d: text_of(d, "product-file") == product_file, 30, "back"
        )
        await in_thread(driver.back)
        await in_thread(
            wait_for, driver, lambda d: text_of(d, "job-id") == job_id, 30, "back to the job"
        )
        assert text_of(driver, "phase") == "COMPLETED"
        for root in _server_paths(svc):
            assert root not in driver.page_source
