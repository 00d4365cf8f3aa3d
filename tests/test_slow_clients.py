"""Slow clients: unfinished headers and trickled bodies do not hold the server.

The service's own server options (`web.app.server_options`) on a real TCP site:
connections that never finish their request headers are closed after the idle
timeout, a body that does not arrive in time gets 408, and long request lines up to
the service's parameter limits are accepted.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from soda_reduce.config import Settings
from soda_reduce.runtime.store import Store
from soda_reduce.web.app import server_options
from tests.support.uws_harness import Harness, uws_service


async def _site(svc: Harness, settings: Settings) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(svc.client.app, access_log=None, **server_options(settings))
    await runner.setup()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner, port


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(1024):
                pass
        return True
    except TimeoutError:
        return False


async def test_unfinished_headers_and_slow_bodies(
    store: Store, demo_archive: Path, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path, archive_dir=demo_archive, idle_timeout_s=1.0, body_timeout_s=1.0
    )
    async with uws_service(store, demo_archive, tmp_path, settings=settings) as svc:
        runner, port = await _site(svc, settings)
        try:
            # 50 connections that never finish their headers
            streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(50)]
            for _, writer in streams:
                writer.write(b"GET /soda/async HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                await writer.drain()
            started = time.monotonic()
            closed = await asyncio.gather(*(_closed_within(r, 5.0) for r, _ in streams))
            assert all(closed) and time.monotonic() - started < 5.0
            for _, writer in streams:
                writer.close()

            # a body announced and trickled: 408 with a DALI error, once the timeout passes
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /soda/async HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: 1000\r\n\r\nID=abc"
            )
            await writer.drain()
            async with asyncio.timeout(10):
                status = await reader.readline()
                rest = await reader.read(4096)
            assert b" 408 " in status, status
            assert b"did not arrive within" in rest
            writer.close()

            # a GET line of 20 KB (limits allow 64 Ki characters) is read and parsed
            ring = " ".join(
                f"{10 + math.cos(k / 16):.9f} {20 + math.sin(k / 16):.9f}" for k in range(100)
            )
            params = [("ID", "x")] + [("POLYGON", ring)] * 4
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/soda/sync", params=params) as response,
            ):
                assert len(str(response.url)) > 8190
                assert response.status == 400
                assert (await response.text()).startswith("MultiValuedParamNotSupported")
        finally:
            await runner.cleanup()
