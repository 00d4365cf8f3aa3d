"""Store outages as the service's typed error: a 503 with ``Retry-After``, never a hang or a 500.

PyMongo reports a store it cannot reach as `ConnectionFailure` and its subclasses
(`ServerSelectionTimeoutError` once server selection gave up, `AutoReconnect` for a dropped
connection, `NetworkTimeout`, `WaitQueueTimeoutError`). Callers above the store see them as
`StoreUnavailable`, a DALI `TransientError`, so the web layer answers 503 ServiceUnavailable
and a worker knows the failure says nothing about the job.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from pymongo.errors import ConnectionFailure

from soda_reduce.vo.dali import TransientError

P = ParamSpec("P")
T = TypeVar("T")

OUTAGE_ERRORS: tuple[type[Exception], ...] = (ConnectionFailure,)
RETRY_AFTER_S = 5  # an embedded store restarts in ~1 s; a production failover takes seconds
MESSAGE = "ServiceUnavailable: the job store does not answer right now; retry in a few seconds"


class StoreUnavailable(TransientError):
    """The store does not answer (restarting, down, unreachable): retrying later may work.

    The message is public (it goes into error documents and job errors): it never holds
    the driver's text, which names hosts and ports; that goes to the log.
    """

    def __init__(self, message: str = MESSAGE, retry_after: int = RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the store could not be reached (typed or still PyMongo's)."""
    return isinstance(exc, StoreUnavailable | ConnectionFailure)


@contextmanager
def store_errors() -> Iterator[None]:
    """Raise `StoreUnavailable` for PyMongo's connection errors inside the block."""
    try:
        yield
    except ConnectionFailure as exc:
        raise StoreUnavailable() from exc


def typed_errors(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorate a coroutine function of the store: its outages raise `StoreUnavailable`."""

    @functools.wraps(method)
    async def wrapped(*args: P.args, **kwargs: P.kwargs) -> T:
        with store_errors():
            return await method(*args, **kwargs)

    return wrapped
