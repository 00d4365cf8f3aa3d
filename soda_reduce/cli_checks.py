"""What the command line checks before it starts anything: arguments, paths, URLs.

Every check here is cheap (no store, no pipeline, no FITS) and raises `CommandError`
with a one-line message, so a mistyped command answers at once instead of after the
store started, and never with a traceback. Exit statuses: 0 when everything asked for
was done, 1 when something failed or was not done, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import tempfile
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path

EXIT_OK = 0
EXIT_FAILURE = 1  # something failed, or not everything asked for was done
EXIT_USAGE = 2
MAX_LIST_ITEMS = 1000  # --id / --where / --param given this many times at most
MAX_ITEM_CHARS = 4096


class CommandError(Exception):
    """A one-line error for the user, with the exit status; ``details`` are lines printed
    before it (what is missing, say), the ``error:`` line always last."""

    def __init__(self, message: str, status: int = EXIT_USAGE, details: Sequence[str] = ()) -> None:
        super().__init__(message.removeprefix("error: "))
        self.status = status
        self.details = tuple(details)


def bounded_int(
    minimum: int, maximum: int | None = None, *, even: bool = False
) -> Callable[[str], int]:
    """An argparse type: an integer within bounds (argparse names the option)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if maximum is None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"must be between {minimum} and {maximum}, got {value}"
            )
        if even and value % 2:
            raise argparse.ArgumentTypeError(f"{value} must be even")
        return value

    return parse


def nonempty(text: str) -> str:
    if not text.strip() or len(text) > MAX_ITEM_CHARS or "\0" in text:
        raise argparse.ArgumentTypeError("must be a non-empty value")
    return text


def directory(option: str, value: str) -> Path:
    """An existing directory."""
    path = Path(value).expanduser()
    if not path.exists():
        raise CommandError(f"{option} {value}: no such directory")
    if not path.is_dir():
        raise CommandError(f"{option} {value}: not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise CommandError(f"{option} {value}: not readable")
    return path.resolve()


def writable_directory(option: str, value: str, *, parents: bool = False) -> Path:
    """A directory that exists or can be made, and is not a file: its folder must exist
    (as for ``mkdir``: a typo is not a new tree), or with ``parents`` its first existing
    ancestor must be a writable directory."""
    path = Path(value).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise CommandError(f"{option} {value}: a file is in the way (a directory is needed)")
    if not parents and not path.exists():
        if path.parent.exists() and not path.parent.is_dir():
            raise CommandError(f"{option} {value}: {path.parent} is a file, not a directory")
        if not path.parent.is_dir():
            raise CommandError(f"{option} {value}: no folder {path.parent}")
    ancestor = path
    while not ancestor.exists():  # bounded by the path's depth
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CommandError(f"{option} {value}: {ancestor} is a file, not a directory")
    if not can_write_in(ancestor):
        raise CommandError(f"{option} {value}: {ancestor} is not writable")
    return path.resolve()


def can_write_in(folder: Path) -> bool:
    """Whether a file can be created in ``folder``: tried, since permission bits do not
    tell (root, read-only mounts, pseudo file systems)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def output_file(option: str, value: str) -> Path:
    """A file to write: its folder exists and is writable, and it is not a directory."""
    path = Path(value).expanduser().absolute()
    if path.is_dir():
        raise CommandError(f"{option} {value}: is a directory (a file name is needed)")
    if not path.parent.is_dir():
        raise CommandError(f"{option} {value}: no folder {path.parent}")
    if not can_write_in(path.parent):
        raise CommandError(f"{option} {value}: the folder {path.parent} is not writable")
    return path


def pairs(items: Iterable[str] | None, option: str) -> dict[str, str]:
    """``NAME=VALUE`` items (repeatable options) as a dict."""
    found: dict[str, str] = {}
    for item in list(items or ())[: MAX_LIST_ITEMS + 1]:
        if len(found) >= MAX_LIST_ITEMS:
            raise CommandError(f"{option}: at most {MAX_LIST_ITEMS} are accepted")
        name, equals, value = item.partition("=")
        if not equals or not name.strip():
            raise CommandError(f"{option} must be NAME=VALUE, got {item!r}")
        found[name.strip()] = value.strip()
    return found


def count(items: list[str] | None, option: str) -> list[str]:
    items = list(items or ())
    if len(items) > MAX_LIST_ITEMS:
        raise CommandError(f"{option}: at most {MAX_LIST_ITEMS} are accepted")
    return items


def mongo_url(value: str) -> str:
    """A MongoDB URL that PyMongo can parse (no network: an ``mongodb+srv://`` URL is
    checked in its plain form, since resolving it would ask DNS)."""
    from soda_reduce.runtime.store import url_hosts

    srv = value.startswith("mongodb+srv://")
    if not (srv or value.startswith("mongodb://")):
        raise CommandError("--mongo-url must start with mongodb:// or mongodb+srv://")
    plain = "mongodb://" + value.removeprefix("mongodb+srv://") if srv else value
    try:
        hosts = url_hosts(plain)
    except ValueError as exc:
        raise CommandError(f"--mongo-url: {exc}") from None
    if srv and (len(hosts) != 1 or ":" in plain.split("@")[-1].split("/")[0]):
        raise CommandError("--mongo-url: a mongodb+srv:// URL names one host and no port")
    return value


def pipeline_name(value: str | None) -> str | None:
    """An installed pipeline's name (entry points only: nothing is imported)."""
    if value is None:
        return None
    names = sorted({e.name.lower() for e in metadata.entry_points(group="soda_reduce.pipelines")})
    if value.lower() not in names:
        raise CommandError(f"--pipeline {value}: no such pipeline (installed: {', '.join(names)})")
    return value


def bound_socket(host: str, port: int) -> socket.socket:
    """The service's socket, bound now and listening only once the service is ready
    (until then a client is refused, as before it started): a port in use is reported
    before any work (the store, the demo archive, indexing), and stays ours meanwhile."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise CommandError(f"--host {host}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise CommandError(f"cannot listen on {host}:{port}: {_why(exc)}", EXIT_FAILURE) from None
    sock.setblocking(False)
    return sock


def _why(exc: OSError) -> str:
    return "already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
