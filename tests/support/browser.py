"""Headless Chromium for the page tests: Debian's chromium and chromium-driver driven by
Selenium (no driver download, no proxy, loopback only).

Without the browser a test is skipped on a workstation, but fails when ``CI`` is set: a CI
run must not pass by skipping what it exists to check. Selenium's calls block, so tests
make them through `in_thread`, which keeps the server on the test's event loop serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.tools import missing

T = TypeVar("T")
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--no-proxy-server",  # loopback only, whatever the environment says
    "--window-size=1280,1600",
)


def make_driver(profile: Path, log: Path) -> Any:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER), log_output=str(log))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    return driver


async def in_thread(fn: Callable[..., T], *args: Any, timeout: float = 60) -> T:
    """Blocking Selenium calls off the loop, so the server on this loop keeps serving."""
    return await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout)


@asynccontextmanager
async def chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """A headless browser for one test (each test module makes it its ``browser`` fixture)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        missing("Debian's chromium and chromium-driver are not installed")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing("selenium is not installed")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download
    driver = await in_thread(make_driver, tmp_path / "profile", tmp_path / "chromedriver.log")
    try:
        yield driver
    finally:
        await in_thread(driver.quit, timeout=30)


def wait_for(driver: Any, condition: Callable[[Any], Any], seconds: float, what: str) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(
        driver, seconds, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )
    try:
        return wait.until(condition)
    except TimeoutException:
        raise AssertionError(f"{what} within {seconds} s; page:\n{driver.page_source}") from None


def text_of(driver: Any, element_id: str) -> str:
    """One element's text ("" if absent), read in one script: the panel may be swapped."""
    text = driver.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.textContent : null;",
        element_id,
    )
    return " ".join((text or "").split())
