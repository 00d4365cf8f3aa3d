"""The real RabbitMQ the queue tests talk to: reachability, and restarts that always recover."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

URL = "amqp://guest:guest@127.0.0.1:5672/"


def port_open(port: int = 5672, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


# under CI the broker must be there (the test command starts it): its tests run, and fail
requires_rabbit = pytest.mark.skipif(
    not port_open() and not os.environ.get("CI"),
    reason="RabbitMQ refuses connections on 127.0.0.1:5672",
)


async def run_command(*argv: str, timeout: float = 60) -> str:
    """Run a command (rabbitmqctl...), bounded; its output, or AssertionError if it failed."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{' '.join(argv)}: {text}"
    return text


async def wait_port(timeout: float, port: int = 5672) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return True
        await asyncio.sleep(0.2)
    return False


async def ensure_broker_running() -> None:
    """However the test went, leave RabbitMQ accepting connections."""
    if port_open():
        return
    try:
        await run_command("rabbitmqctl", "start_app")
    except (AssertionError, TimeoutError):
        await run_command("rabbitmq-server", "-detached")
    assert await wait_port(60), "RabbitMQ did not come back"
