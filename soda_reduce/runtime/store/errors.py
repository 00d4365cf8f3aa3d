"""The store's failures as the service's own typed errors: nothing above the store sees PyMongo's.

- an outage (`ConnectionFailure` and its subclasses: `ServerSelectionTimeoutError` once server
  selection gave up, `AutoReconnect` for a dropped connection, `NetworkTimeout`,
  `WaitQueueTimeoutError`) is `StoreUnavailable`, a DALI `TransientError`: the web layer
  answers 503 ServiceUnavailable with ``Retry-After``, and a worker knows the failure says
  nothing about the job;
- a write refused for a unique index is `DuplicateKey` (``duplicates``: the positions of the
  refused documents of a bulk write), which the collection's owner usually expects (a race,
  an idempotent registration) and handles;
- a document beyond the store's 16 MiB is `DocumentTooLarge` (PyMongo's own check before
  sending, or the server's codes 10334 / 17419 / 17420);
- anything else the store refuses is `StoreError`, a fault of the service (500).

A bulk write refused in part says which of its documents were refused, each with its own
typed error (``refused``): the others were written.

Their messages are public (error documents, job errors): never the driver's text, which
names hosts, ports and may quote whole documents; that goes to the log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from pymongo.errors import DocumentTooLarge as DriverDocumentTooLarge

from soda_reduce.vo.dali import FatalError, TransientError

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

OUTAGE_ERRORS: tuple[type[Exception], ...] = (ConnectionFailure,)
RETRY_AFTER_S = 5  # an embedded store restarts in ~1 s; a production failover takes seconds
MESSAGE = "ServiceUnavailable: the job store does not answer right now; retry in a few seconds"
DUPLICATE_KEY = 11000
TOO_LARGE = frozenset({10334, 17419, 17420})  # BSONObjectTooLarge; an update's result too large
RETRIES = 6
RETRY_WINDOW_S = 2.0  # dropped connections are retried within this much time of the first try


class StoreUnavailable(TransientError):
    """The store does not answer (restarting, down, unreachable): retrying later may work.

    The message is public (it goes into error documents and job errors): it never holds
    the driver's text, which names hosts and ports; that goes to the log.
    """

    def __init__(self, message: str = MESSAGE, retry_after: int = RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class StoreError(FatalError):
    """The store refused an operation (not an outage): a fault of the service, 500.

    ``refused``: for a bulk write, position -> why that document was refused (the
    documents not named were written); empty for a single operation.
    """

    def __init__(
        self,
        message: str = "the store refused the operation",
        refused: Mapping[int, StoreError] | None = None,
    ) -> None:
        super().__init__(message)
        self.refused: dict[int, StoreError] = dict(refused or {})


class DuplicateKey(StoreError):
    """A write refused by a unique index."""

    def __init__(self, refused: Mapping[int, StoreError] | None = None) -> None:
        super().__init__("the store already holds a document with this key", refused)

    @property
    def duplicates(self) -> tuple[int, ...]:
        """The positions, in a bulk write, of the documents refused for their key."""
        return tuple(sorted(self.refused))


class DocumentTooLarge(StoreError):
    """A document beyond the store's limit (16 MiB)."""

    def __init__(self, refused: Mapping[int, StoreError] | None = None) -> None:
        super().__init__("a document is larger than the store accepts (16 MiB)", refused)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the store could not be reached (typed or still PyMongo's)."""
    return isinstance(exc, StoreUnavailable | ConnectionFailure)


def typed(exc: BaseException) -> Exception | None:
    """The typed error for one of PyMongo's, or None when ``exc`` is none of the store's."""
    if isinstance(exc, ConnectionFailure):
        return StoreUnavailable()
    if isinstance(exc, DriverDocumentTooLarge):
        return DocumentTooLarge()
    if isinstance(exc, DuplicateKeyError):
        return DuplicateKey()
    if isinstance(exc, BulkWriteError):
        return _bulk(exc)
    if isinstance(exc, OperationFailure) and exc.code in TOO_LARGE:
        return DocumentTooLarge()
    if isinstance(exc, PyMongoError):
        log.warning("store error: %.300s", exc)  # the driver's text stays in the log
        return StoreError()
    return None


def _one(code: Any) -> StoreError:
    if code == DUPLICATE_KEY:
        return DuplicateKey()
    if code in TOO_LARGE:
        return DocumentTooLarge()
    return StoreError()


def _bulk(exc: BulkWriteError) -> StoreError:
    """A bulk write's refusals, document by document; the error's class is theirs when
    they agree (all duplicates, all too large), else `StoreError`."""
    errors = exc.details.get("writeErrors") or []
    refused = {int(e["index"]): _one(e.get("code")) for e in errors if "index" in e}
    kinds = {type(error) for error in refused.values()}
    if not refused or exc.details.get("writeConcernErrors"):
        log.warning("store error: %.300s", exc)
        return StoreError(refused=refused)
    if kinds == {DuplicateKey}:
        return DuplicateKey(refused)
    if kinds == {DocumentTooLarge}:
        return DocumentTooLarge(refused)
    log.warning("store error: %.300s", exc)
    return StoreError(refused=refused)


@contextmanager
def store_errors() -> Iterator[None]:
    """Raise the typed error for PyMongo's errors inside the block."""
    try:
        yield
    except (PyMongoError, DriverDocumentTooLarge) as exc:
        error = typed(exc)
        if error is None:  # pragma: no cover - typed() types every PyMongoError
            raise
        raise error from exc


def typed_errors(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorate a coroutine function of the store: PyMongo's errors raise typed ones."""

    @functools.wraps(method)
    async def wrapped(*args: P.args, **kwargs: P.kwargs) -> T:
        with store_errors():
            return await method(*args, **kwargs)

    return wrapped


async def retrying(call: Callable[[], Awaitable[T]]) -> T:
    """Run a store call, again after a dropped connection; PyMongo's errors raise typed.

    Only a dropped connection (`AutoReconnect`) is retried, within `RETRY_WINDOW_S` of the
    first try: every call made through here is idempotent or guarded by a compare-and-set,
    so repeating it is safe. A server-selection timeout is not retried: the driver already
    waited the store's timeout for a server (`Store.connect`), and waiting again would
    hold a request for many times that. A restarting embedded store is back within that
    timeout. `StoreUnavailable` if the store stays out of reach.
    """
    first = time.monotonic()
    for attempt in range(RETRIES):
        try:
            return await call()
        except ServerSelectionTimeoutError as exc:
            raise StoreUnavailable() from exc
        except AutoReconnect as exc:  # NetworkTimeout too: the connection dropped
            delay = 0.1 * 2**attempt
            if attempt == RETRIES - 1 or time.monotonic() - first + delay > RETRY_WINDOW_S:
                raise StoreUnavailable() from exc
            await asyncio.sleep(delay)
        except (PyMongoError, DriverDocumentTooLarge) as exc:
            error: Any = typed(exc)
            raise error from exc
    raise AssertionError("unreachable")
