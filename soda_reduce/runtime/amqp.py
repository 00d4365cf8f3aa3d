"""A robust AMQP connection shared by the plan queue and the job events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aio_pika
from aio_pika.abc import AbstractRobustConnection

log = logging.getLogger(__name__)


async def quietly(step: Awaitable[Any], what: str, level: int = logging.DEBUG) -> None:
    """Await a clean-up step for at most 5 s; a failure is logged, not raised."""
    try:
        async with asyncio.timeout(5):
            await step
    except Exception as exc:
        log.log(level, "%s: %r", what, exc)


class AmqpLink:
    """A robust AMQP connection that may come up after the process started.

    The first attempt is made in `start`; if it fails, the process starts anyway
    (the API keeps accepting jobs, the sweeper publishes them later) and a
    background task retries with backoff. Once connected, aio-pika's robust
    connection restores channels, queues, bindings and consumers after an outage.
    `setup` declares the topology on the new connection.
    """

    def __init__(
        self,
        url: str,
        setup: Callable[[AbstractRobustConnection], Coroutine[Any, Any, None]],
        *,
        connect_timeout: float = 5.0,
        reconnect_interval: float = 1.0,
        max_backoff: float = 30.0,
    ) -> None:
        self._url, self._setup = url, setup
        self._connect_timeout = connect_timeout
        self._reconnect_interval = reconnect_interval
        self._max_backoff = max_backoff
        self._ready = asyncio.Event()
        self._retry: asyncio.Task[None] | None = None
        self.connection: AbstractRobustConnection | None = None
        self.last_error: BaseException | None = None

    @property
    def up(self) -> bool:
        """Connected right now (False during an outage, until reconnected)."""
        conn = self.connection
        return conn is not None and not conn.is_closed and conn.connected.is_set()

    async def start(self) -> None:
        try:
            await self._attempt()
        except Exception as exc:
            log.warning("broker not reachable at start (%r); retrying in the background", exc)
            self._retry = asyncio.create_task(self._retry_loop(), name="amqp connect")

    async def _attempt(self) -> None:
        try:
            async with asyncio.timeout(self._connect_timeout * 2):
                conn = await aio_pika.connect_robust(
                    self._url,
                    timeout=self._connect_timeout,
                    reconnect_interval=self._reconnect_interval,
                )
                try:
                    await self._setup(conn)
                except BaseException:
                    await asyncio.shield(quietly(conn.close(), "closing connection"))
                    raise
        except Exception as exc:
            self.last_error = exc
            raise
        self.connection = conn
        self._ready.set()

    async def _retry_loop(self) -> None:
        delay = self._reconnect_interval
        while True:  # until connected, or cancelled by close()
            await asyncio.sleep(delay)
            try:
                await self._attempt()
            except Exception as exc:
                log.warning("broker still not reachable (%r); next try in %.0f s", exc, delay)
                delay = min(delay * 2, self._max_backoff)
            else:
                log.info("broker connection established")
                return

    async def wait_ready(self) -> AbstractRobustConnection:
        """The connection, once established (waits while the broker was never reached)."""
        await self._ready.wait()
        assert self.connection is not None
        return self.connection

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            await asyncio.gather(self._retry, return_exceptions=True)
        if self.connection is not None:
            await quietly(self.connection.close(), "closing connection")
