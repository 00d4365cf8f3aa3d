"""The README's first command: ``soda-reduce serve`` on embedded defaults, end to end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_serve_generates_demo_archive_indexes_and_plans(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SODA_REDUCE_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "soda_reduce.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        status = 0
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                status, page = _get(base + "/")
                break
            except OSError:
                time.sleep(0.3)
        assert status == 200
        assert (tmp_path / "data" / "demo-archive" / "_truth" / "manifest.json").exists()
        assert "SCIENCE" in page and "truncated_header.fits" in page
        status, text = _get(base + "/plan?target=science")
        assert status == 200
        assert "INCOMPLETE" in text and "level 1" in text
        status, text = _get(base + "/plan?TARGET=bias&format=json")
        assert status == 200 and '"target": "bias"' in text
        status, text = _get(base + "/plan?target=nonsense")
        assert status == 400 and "no task 'nonsense'" in text
        status, text = _get(base + "/plan?target=bias&target=flat")
        assert status == 400
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "serving on" in output
