"""Service settings, from the environment (``SODA_REDUCE_*``) with embedded defaults.

Every setting has a default that works on a laptop: no MongoDB URL means the
embedded store is started as a child process inside ``data_dir``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from soda_reduce.reduction.index_model import DEFAULT_AUTHORITY

ENV_PREFIX = "SODA_REDUCE_"


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(ENV_PREFIX + name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    """What the service needs to know; immutable, passed down explicitly."""

    data_dir: Path = field(default_factory=lambda: Path("soda-data").resolve())
    archive_dir: Path | None = None
    mongo_url: str | None = None
    database: str = "soda_reduce"
    authority: str = DEFAULT_AUTHORITY
    checksum_mode: str = "full"

    @classmethod
    def from_env(cls) -> Settings:
        archive = _env("ARCHIVE")
        return cls(
            data_dir=Path(_env("DATA_DIR", "soda-data") or "soda-data").resolve(),
            archive_dir=Path(archive).resolve() if archive else None,
            mongo_url=_env("MONGO_URL"),
            database=_env("DATABASE", "soda_reduce") or "soda_reduce",
            authority=_env("AUTHORITY", DEFAULT_AUTHORITY) or DEFAULT_AUTHORITY,
            checksum_mode=_env("CHECKSUM", "full") or "full",
        )

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]
