"""Pages for people: archive, job list, job page with live progress, raw-file page.

The HTTP-level tests read the pages as a client would; the browser test drives Debian's
headless Chromium through Selenium and the system chromedriver (no driver download) against
the real service listening on 127.0.0.1, submits the raw-file page's form, watches the job
page update itself without a reload, follows its links and takes a screenshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from soda_reduce.pipelines import registry
from soda_reduce.runtime.archive_plans import ArchivePipelines
from soda_reduce.runtime.executors.local import LocalExecutor
from soda_reduce.runtime.indexer import index_archive
from soda_reduce.runtime.runner import RunnerConfig
from soda_reduce.runtime.store import Store
from soda_reduce.runtime.worker import Worker, WorkerConfig
from soda_reduce.web.app import ServiceState, build_app
from soda_reduce.web.middleware import AuthConfig
from soda_reduce.web.sessions import COOKIE
from tests.support.browser import chromium, in_thread, text_of, wait_for
from tests.support.uws_harness import Harness, uws_service

ALICE = {"X-Remote-User": "alice"}
BOB = {"X-Remote-User": "bob"}
FINAL = ("COMPLETED", "ERROR", "ABORTED")


@pytest.fixture
async def svc(store: Store, demo_archive: Path, tmp_path: Path) -> AsyncIterator[Harness]:
    auth = AuthConfig(trusted_header="X-Remote-User")
    async with uws_service(store, demo_archive, tmp_path, auth=auth) as harness:
        yield harness


def _raw_path(file_id: str) -> str:
    return file_id.split("?", 1)[1]


async def _page(svc: Harness, path: str, headers: dict[str, str] | None = None, status=200):
    response = await svc.client.get(path, headers=headers)
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "text/html"
    return text


async def _wait_final(svc: Harness, job_id: str, headers: dict[str, str]) -> str:
    for _ in range(12):  # 12 x WAIT=10 s at most
        response = await svc.client.get(f"/jobs/{job_id}/status.json", headers=headers)
        status = await response.json()
        if status["final"]:
            return status["phase"]
        await svc.client.get(f"/soda/async/{job_id}?WAIT=10", headers=headers)
    raise AssertionError(f"job {job_id} not final")


async def _submit(svc: Harness, data: list[tuple[str, str]], headers: dict[str, str]) -> str:
    response = await svc.client.post("/jobs", data=data, headers=headers, allow_redirects=False)
    assert response.status == 303, await response.text()
    location = response.headers["Location"]
    assert re.fullmatch(r"/jobs/[A-Za-z0-9]+", location), location
    return location.rsplit("/", 1)[1]


# ----------------------------------------------------------------- HTTP level


async def test_index_summarises_the_archive_and_links_raw_pages(svc: Harness) -> None:
    page = await _page(svc, "/")
    assert "SCIENCE" in page and "BIAS" in page and "indexed files" in page
    assert 'action="/plan"' in page and 'href="/jobs"' in page
    link = "/raw/" + quote(_raw_path(svc.complete_id))
    assert f'href="{link}"' in page
    only_bias = await _page(svc, "/?category=BIAS")
    assert "bias_" in only_bias and link not in only_bias
    assert (await svc.client.get("/static/style.css")).status == 200
    assert (await svc.client.get("/static/job.js")).status == 200


async def test_raw_page_shows_header_calibrations_and_a_reduce_form(svc: Harness) -> None:
    path = _raw_path(svc.complete_id)
    page = await _page(svc, "/raw/" + quote(path))
    assert svc.complete_id in page and ">SCIENCE<" in page
    assert 'name="ID" value="' + svc.complete_id + '"' in page
    assert '<option value="science" selected>' in page
    assert 'name="science.cr_sigma"' in page and 'name="flat.combine"' in page
    assert 'min="2.0"' in page and 'max="20.0"' in page
    assert 'id="calibrations"' in page and "bias_" in page and "level 0" in page
    assert "/datalink?ID=" + quote(svc.complete_id, safe="") in page
    for element in ("raw-preview", "raw-file"):  # served by web/datalink.py
        match = re.search(rf'id="{element}" (?:src|href)="([^"]+)"', page)
        assert match, element
        response = await svc.client.get(match.group(1))
        assert response.status == 200, (element, await response.text())
        expected = "image/png" if element == "raw-preview" else "application/fits"
        assert response.content_type == expected
    by_id = await _page(svc, "/raw?ID=" + quote(svc.complete_id, safe=""))
    assert 'id="reduce"' in by_id
    missing = await _page(svc, "/raw/2099-01-01/nothing.fits", status=404)
    assert "no raw file" in missing
    if svc.incomplete_id:  # cannot be reduced: the page says why
        page = await _page(svc, "/raw/" + quote(_raw_path(svc.incomplete_id)))
        assert 'id="reduce-problem"' in page


async def test_form_creates_runs_and_lands_on_the_job_page(svc: Harness) -> None:
    data = [
        ("ID", svc.complete_id),
        ("PHASE", "RUN"),
        ("TARGET", "science"),
        ("RUNID", "<b>mine</b>"),
        ("science.cr_sigma", "5"),
        ("flat.combine", ""),  # empty: the default
        ("use_dark", ""),
    ]
    job_id = await _submit(svc, data, ALICE)
    job = await svc.runtime.service.get(job_id, "alice")
    assert job.run_id == "<b>mine</b>"
    assert ("science.cr_sigma", "5") in job.parameters
    assert not any(name in ("flat.combine", "USE_DARK") for name, _ in job.parameters)
    assert await _wait_final(svc, job_id, ALICE) == "COMPLETED"

    page = await _page(svc, f"/jobs/{job_id}", ALICE)
    assert 'id="phase" class="phase phase-completed">COMPLETED<' in page
    assert '<span id="steps-done">4</span> / <span id="steps-total">4</span>' in page
    assert page.count('class="log"') == 4
    assert page.count('class="preview"') == 4  # science, bias, dark and flat previews
    for kind in ("reduced", "reduced-raw", "all"):
        assert f'href="/soda/async/{job_id}/bundles/{kind}.zip"' in page
    assert "&lt;b&gt;mine&lt;/b&gt;" in page and "<b>mine</b>" not in page  # escaped
    for log in re.findall(r'class="log" href="([^"]+)"', page):
        response = await svc.client.get(log)
        assert response.status == 200 and response.content_type == "text/plain"
    status = await (await svc.client.get(f"/jobs/{job_id}/status.json", headers=ALICE)).json()
    assert status["phase"] == "COMPLETED" and status["final"] is True
    assert status["progress"]["done"] == status["progress"]["total"] == 4
    assert [s["status"] for s in status["steps"]] == ["done"] * 4
    panel = await _page(svc, f"/jobs/{job_id}/panel", ALICE)
    assert f'data-signature="{status["signature"]}"' in panel and "<html" not in panel

    listing = await _page(svc, "/jobs", ALICE)
    assert f'href="/jobs/{job_id}"' in listing and "COMPLETED" in listing
    assert "4 / 4 steps" in listing and "&lt;b&gt;mine&lt;/b&gt;" in listing


async def test_people_see_only_their_own_jobs(svc: Harness) -> None:
    job_id = await _submit(svc, [("ID", svc.complete_id), ("PHASE", "RUN")], ALICE)
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/panel"):
        page = await _page(svc, path, BOB, status=404)
        assert "no job" in page
    assert (await svc.client.get(f"/jobs/{job_id}/status.json", headers=BOB)).status == 404
    assert (await svc.client.get(f"/jobs/{job_id}/status.json")).status == 404  # anonymous
    assert job_id not in await _page(svc, "/jobs", BOB)
    assert 'id="no-jobs"' in await _page(svc, "/jobs", BOB)
    assert job_id in await _page(svc, "/jobs", ALICE)
    await _wait_final(svc, job_id, ALICE)


async def test_bad_forms_get_an_html_error_and_other_sites_are_refused(svc: Harness) -> None:
    response = await svc.client.post(
        "/jobs", data={"ID": svc.complete_id, "TARGET": "nope"}, headers=ALICE
    )
    assert response.status == 400 and response.content_type == "text/html"
    assert "unknown TARGET" in await response.text()
    for origin in ("http://elsewhere.example", "null"):
        foreign = await svc.client.post(
            "/jobs",
            data={"ID": svc.complete_id},
            headers={**ALICE, "Origin": origin},
            allow_redirects=False,
        )
        assert foreign.status == 403
    listing = await _page(svc, "/jobs", ALICE)
    assert 'id="no-jobs"' in listing  # none of these requests created a job
    same_site = {**ALICE, "Origin": str(svc.client.make_url("")).rstrip("/")}
    if svc.incomplete_id:  # a job that fails: its page says why
        job_id = await _submit(svc, [("ID", svc.incomplete_id)], same_site)
        assert await _wait_final(svc, job_id, ALICE) == "ERROR"
        page = await _page(svc, f"/jobs/{job_id}", ALICE)
        assert ">ERROR<" in page and 'id="job-error"' in page and "cannot be reduced" in page
        assert 'class="bundle"' not in page


async def test_preview_app_without_services_serves_the_index(
    store: Store, demo_archive: Path
) -> None:
    """``build_app`` without services (plan previews only): the index works, no job links."""
    await index_archive(store, demo_archive, authority="example.org", checksum_mode="fast")
    app = build_app(ServiceState(store, ArchivePipelines(registry()), "demo <archive>"))
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/")
        page = await response.text()
        assert response.status == 200 and response.content_type == "text/html"
        assert "SCIENCE" in page and "demo &lt;archive&gt;" in page
        assert 'href="/jobs"' not in page and "/raw/" not in page
        assert (await client.get("/static/style.css")).status == 200
        assert (await client.get("/jobs")).status == 404


# ----------------------------------------------------------------- headless Chromium


@asynccontextmanager
async def running_worker(svc: Harness) -> AsyncIterator[None]:
    """A worker started late, so the page is seen before the job runs (one recipe at a time)."""
    runtime = svc.runtime
    executor = LocalExecutor(concurrency=1)
    config = WorkerConfig(lease_s=6.0, check_s=0.5, runner=RunnerConfig(backoff_s=0.2))
    worker = Worker(
        runtime.store,
        runtime.queue,
        runtime.events,
        executor,
        runtime.products,
        svc.archive,
        config=config,
    )
    task = asyncio.create_task(worker.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await executor.close()


@pytest.fixture
async def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    async with chromium(tmp_path, monkeypatch) as driver:
        yield driver


WATCH_PANEL = """
window.__marker = 'no reload';
window.__seen = [];
const record = () => {
  const phase = document.getElementById('phase');
  const done = document.getElementById('steps-done');
  const now = (phase ? phase.textContent : '?') + ' ' + (done ? done.textContent : '?');
  if (window.__seen[window.__seen.length - 1] !== now) { window.__seen.push(now); }
};
record();
new MutationObserver(record).observe(document.getElementById('job-panel'),
                                     {childList: true, subtree: true});
"""

RAW_PREVIEW = """
const img = document.getElementById('raw-preview');
return img && img.complete ? img.naturalWidth : 0;
"""

IMAGES = """
return Array.from(document.querySelectorAll('img.preview'))
  .map(img => [img.complete, img.naturalWidth, img.getAttribute('src')]);
"""


async def test_browser_reduces_a_raw_file_and_follows_the_job(
    store: Store, demo_archive: Path, tmp_path: Path, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    async with uws_service(store, demo_archive, tmp_path / "svc", worker=False) as svc:
        base = svc.base
        # the archive page links the raw-file page
        await in_thread(driver.get, base + "/")
        assert "soda-reduce" in driver.title
        link = "/raw/" + quote(_raw_path(svc.complete_id))
        element = driver.find_element(By.CSS_SELECTOR, f'a[href="{link}"]')
        await in_thread(element.click)
        await in_thread(wait_for, driver, lambda d: d.find_elements(By.ID, "reduce"), 30, "form")
        assert text_of(driver, "category") == "SCIENCE"
        preview = await in_thread(
            wait_for,
            driver,
            lambda d: d.execute_script(RAW_PREVIEW),
            30,
            "the raw preview decoded",
        )
        assert preview > 0
        raw_shot = tmp_path / "raw-page.png"
        assert await in_thread(driver.save_screenshot, str(raw_shot))
        assert raw_shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

        # fill in and submit the "reduce this" form: the browser lands on the job page
        Select(driver.find_element(By.ID, "target")).select_by_value("science")
        driver.find_element(By.ID, "runid").send_keys("browser run")
        Select(driver.find_element(By.NAME, "science.cosmic_rays")).select_by_value("false")
        await in_thread(driver.find_element(By.ID, "reduce-submit").click)
        await in_thread(
            wait_for, driver, lambda d: re.search(r"/jobs/\w+$", d.current_url), 30, "job page"
        )
        job_id = driver.current_url.rsplit("/", 1)[1]
        job = await svc.runtime.service.jobs.get(job_id, any_owner=True)  # the browser's session's
        assert job.run_id == "browser run"
        assert ("science.cosmic_rays", "false") in job.parameters
        # no worker yet: the job waits in the queue, nothing done
        assert text_of(driver, "phase") == "QUEUED"
        assert (text_of(driver, "steps-done"), text_of(driver, "steps-total")) == ("0", "4")
        driver.execute_script(WATCH_PANEL)

        async with running_worker(svc):
            await in_thread(
                wait_for,
                driver,
                lambda d: text_of(d, "phase") in FINAL,
                150,
                "the job page showing a final phase",
                timeout=180,
            )
            assert text_of(driver, "phase") == "COMPLETED"
            # the same document all along: updated in place, never reloaded
            assert driver.execute_script("return window.__marker") == "no reload"
            seen = driver.execute_script("return window.__seen")
            assert seen[0] == "QUEUED 0" and seen[-1] == "COMPLETED 4", seen
            counts = [int(s.split()[1]) for s in seen if s.split()[1].isdigit()]
            assert counts == sorted(counts) and len(seen) >= 3, seen

            # previews load (PNG decoded), logs and bundles answer
            images = await in_thread(
                wait_for,
                driver,
                lambda d: (i := d.execute_script(IMAGES)) and all(c for c, _, _ in i) and i,
                30,
                "preview images loaded",
            )
            assert len(images) == 4 and all(width > 0 for _, width, _ in images), images
            logs = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "a.log")]
            assert len(logs) == 4
            for href in logs:
                response = await svc.client.get(href.split(base, 1)[1])
                assert response.status == 200 and "recipe" in (await response.text()).lower()
            bundles = [
                a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "a.bundle")
            ]
            assert [b.rsplit("/", 1)[1] for b in bundles] == [
                "reduced.zip",
                "reduced-raw.zip",
                "all.zip",
            ]
            response = await svc.client.get(bundles[0].split(base, 1)[1])
            assert response.status == 200 and response.content_type == "application/zip"
            archive = zipfile.ZipFile(io.BytesIO(await response.read()))
            assert any(n.endswith("_reduced.fits") for n in archive.namelist())

            shot = tmp_path / "job-page.png"
            assert await in_thread(driver.save_screenshot, str(shot))
            data = shot.read_bytes()
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000

            # the log link opens in the browser
            await in_thread(driver.get, logs[-1])
            assert "recipe" in driver.find_element(By.TAG_NAME, "body").text.lower()

            # the job list; then Run and Delete buttons on a second job, through UWS
            await in_thread(driver.get, base + "/jobs")
            row = driver.find_element(By.CSS_SELECTOR, f'a[href="/jobs/{job_id}"]')
            assert row.text == job_id and "browser run" in text_of(driver, "jobs")
            # a second job of the same anonymous session (only it may run and delete its jobs)
            session = {COOKIE: driver.get_cookie(COOKIE)["value"]}
            svc.client.session.cookie_jar.update_cookies(session)
            pending = await svc.create({"ID": svc.complete_id})
            await in_thread(driver.get, f"{base}/jobs/{pending}")
            assert text_of(driver, "phase") == "PENDING"
            await in_thread(driver.find_element(By.ID, "run").click)
            await in_thread(
                wait_for, driver, lambda d: text_of(d, "phase") == "COMPLETED", 60, "run button"
            )
            await in_thread(driver.find_element(By.ID, "delete").click)
            await in_thread(wait_for, driver, lambda d: _alert(d), 10, "confirm dialog")
            driver.switch_to.alert.accept()
            await in_thread(
                wait_for, driver, lambda d: d.current_url.endswith("/jobs"), 30, "back on /jobs"
            )
            assert pending not in driver.page_source and job_id in driver.page_source


def _alert(driver: Any) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        driver.switch_to.alert  # noqa: B018 - raises while there is none
    except NoAlertPresentException:
        return False
    return True
