"""Service settings, from the environment (``SODA_REDUCE_*``) with embedded defaults.

Every setting has a default that works on a laptop: no MongoDB URL means the
embedded store is started as a child process inside ``data_dir``. The data directory
does not depend on the working folder: ``SODA_REDUCE_DATA_DIR`` (or ``--data-dir``) names
it, else it is a per-user folder with one sub-directory per archive root
(`default_data_dir`), because the header index holds one archive per store.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from soda_reduce.reduction.index_model import DEFAULT_AUTHORITY

ENV_PREFIX = "SODA_REDUCE_"


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(ENV_PREFIX + name)
    return value if value not in (None, "") else default


def _path(value: str | None) -> Path | None:
    return Path(value).resolve() if value else None


def authority_from_base_url(base_url: str | None) -> str | None:
    """The host name of the public URL, as the default IVOA authority: a DNS name the
    operator controls. None for no URL, an IP address or a single-label host."""
    if not base_url:
        return None
    host = (urlsplit(base_url).hostname or "").lower().rstrip(".")
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    return host if "." in host else None


DEMO_DATA_DIR = "demo"  # the data directory of `serve` without an archive (its demo archive)
DEMO_ARCHIVE = "demo-archive"  # the generated demo archive, inside that data directory


def data_home() -> Path:
    """Where per-archive data directories live: ``$XDG_DATA_HOME/soda-reduce``, by default
    ``~/.local/share/soda-reduce`` (the XDG base directory rule)."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "soda-reduce"


def archive_slug(archive: Path) -> str:
    """A readable, unique folder name for an archive root: its name and a short hash of
    its resolved path (two archives named ``raw`` get two folders)."""
    resolved = Path(archive).resolve()
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", resolved.name).strip("-.")[:40] or "root"
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:10]
    return f"{name}-{digest}"


def default_data_dir(archive: Path | None) -> Path:
    """The data directory when none is named: one per archive root under `data_home`.

    No archive (``serve`` generating its demo archive) and that demo archive itself share
    ``demo``, so ``soda-reduce plan --archive .../demo/demo-archive`` uses the store
    ``serve`` indexed it into.
    """
    home = data_home()
    demo = home / DEMO_DATA_DIR
    if archive is None or Path(archive).resolve() == (demo / DEMO_ARCHIVE).resolve():
        return demo
    return home / archive_slug(archive)


def _data_dir(archive: Path | None) -> Path:
    named = _env("DATA_DIR")
    return Path(named).resolve() if named else default_data_dir(archive)


@dataclass(frozen=True)
class Settings:
    """What the service needs to know; immutable, passed down explicitly."""

    data_dir: Path = field(default_factory=lambda: default_data_dir(None))
    archive_dir: Path | None = None
    mongo_url: str | None = None
    database: str = "soda_reduce"
    store_timeout_s: float = 2.0  # a store call waits this long for an unreachable store (503)
    store_linger_s: float = 120.0  # a command's embedded store outlives it this long (0: not)
    authority: str = DEFAULT_AUTHORITY
    checksum_mode: str = "full"
    verify_checksums: bool = False  # index --verify: re-read every file, sum DATASUM'd data
    # queue and execution: no AMQP URL means the in-process queue (embedded mode)
    amqp_url: str | None = None
    amqp_queue: str = "soda_reduce.plans"  # the plan queue (quorum)
    amqp_exchange: str = "soda_reduce.job_events"  # the job events fanout exchange
    executor: str = "local"  # local | kubernetes
    products_dir: Path | None = None  # default: data_dir / "products"
    overrides_file: Path | None = None  # default: data_dir / "overrides.txt"
    static_dir: Path | None = None  # operator's static calibrations; default: archive/_static
    worker_jobs: int = 2  # plans a worker runs at once (the RabbitMQ prefetch)
    job_lease_s: float = 30.0  # a dead worker's jobs and steps are taken over after this
    # the UWS service
    base_url: str | None = None  # public URL of the service root; default: from the request
    trusted_header: str | None = None  # e.g. X-Remote-User, set by an authenticating proxy
    tokens_file: Path | None = None  # lines "TOKEN OWNER": bearer tokens
    allow_anonymous: bool = True
    wait_cap_s: float = 30.0
    execution_duration_s: int = 4 * 3600  # default executionDuration (0: unlimited)
    max_execution_duration_s: int = 24 * 3600
    destruction_days: float = 7.0
    max_destruction_days: float = 30.0
    step_cache_bytes: int = 20 * 1024**3  # unreferenced steps are collected beyond this
    sweep_s: float = 5.0
    # a QUEUED job no worker took this long after its message was sent is published again
    # (the message may be lost): about twice the longest wait a busy queue normally has
    queued_lost_after_s: float = 600.0
    max_cutouts: int = 1000  # SODA cutouts one job may make (at most 10,000)
    max_job_bytes: int = 2 * 1024**3  # bytes of cutouts one job may write
    status_cache_s: float = 1.0  # job documents served from memory until changed (0: off)
    # VOSI and the registry record (docs/operators.md)
    title: str = "soda-reduce: on-demand reduction of archival data"
    publisher: str | None = None  # default: the authority
    contact_name: str = "Archive operations"
    contact_email: str | None = None
    registry_template: Path | None = None  # default: vo_schemas/voresource-template.xml
    identifier: str | None = None  # of the service record; default ivo://{authority}/soda-reduce
    publishing_registry: bool = True  # /oai: the publishing registry of the authority
    oai_page_size: int = 100  # records per OAI-PMH list page before a resumption token
    min_free_bytes: int = 1024**3  # /availability fails below this free on the product store
    # limits of what one caller may ask (docs/operators.md, "Limits")
    max_request_bytes: int = 256 * 1024  # a request body (413 beyond)
    max_active_jobs: int = 100  # jobs not yet final, per owner or anonymous session
    job_rate_per_minute: float = 60.0  # job creations per caller (0: no limit)
    job_rate_burst: int = 30
    max_cutout_combinations: int = 100  # SODA filter combinations times IDs, per job
    idle_timeout_s: float = 15.0  # a connection without a whole request is closed after this
    body_timeout_s: float = 30.0  # a request body must arrive within this

    @property
    def products_root(self) -> Path:
        return self.products_dir or self.data_dir / "products"

    @property
    def overrides_path(self) -> Path:
        return self.overrides_file or self.data_dir / "overrides.txt"

    def static_root(self, archive: Path | None) -> Path | None:
        """Where operators put static calibrations: ``DIR/<pipeline>/library.json``."""
        if self.static_dir is not None:
            return self.static_dir
        return archive / "_static" if archive is not None else None

    @classmethod
    def from_env(cls) -> Settings:
        archive = _env("ARCHIVE")
        return cls(
            data_dir=_data_dir(Path(archive) if archive else None),
            archive_dir=Path(archive).resolve() if archive else None,
            mongo_url=_env("MONGO_URL"),
            database=_env("DATABASE", "soda_reduce") or "soda_reduce",
            store_timeout_s=float(_env("STORE_TIMEOUT_S", "2") or 2),
            store_linger_s=float(_env("STORE_LINGER_S", "120") or 0),
            # unset: the public URL's host (docs/operators.md), else the placeholder
            authority=_env("AUTHORITY")
            or authority_from_base_url(_env("BASE_URL"))
            or DEFAULT_AUTHORITY,
            checksum_mode=_env("CHECKSUM", "full") or "full",
            amqp_url=_env("AMQP_URL"),
            amqp_queue=_env("AMQP_QUEUE", "soda_reduce.plans") or "soda_reduce.plans",
            amqp_exchange=_env("AMQP_EXCHANGE", "soda_reduce.job_events")
            or "soda_reduce.job_events",
            executor=_env("EXECUTOR", "local") or "local",
            products_dir=_path(_env("PRODUCTS")),
            overrides_file=_path(_env("OVERRIDES")),
            static_dir=_path(_env("STATIC_DIR")),
            worker_jobs=int(_env("WORKER_JOBS", "2") or 2),
            job_lease_s=float(_env("JOB_LEASE_S", "30") or 30),
            base_url=_env("BASE_URL"),
            trusted_header=_env("TRUSTED_HEADER"),
            tokens_file=_path(_env("TOKENS_FILE")),
            allow_anonymous=(_env("ANONYMOUS", "true") or "true").lower() in ("1", "true", "yes"),
            wait_cap_s=float(_env("WAIT_CAP_S", "30") or 30),
            execution_duration_s=int(_env("EXECUTION_DURATION_S", str(4 * 3600)) or 0),
            max_execution_duration_s=int(_env("MAX_EXECUTION_DURATION_S", str(24 * 3600)) or 0),
            destruction_days=float(_env("DESTRUCTION_DAYS", "7") or 7),
            max_destruction_days=float(_env("MAX_DESTRUCTION_DAYS", "30") or 30),
            step_cache_bytes=int(_env("STEP_CACHE_BYTES", str(20 * 1024**3)) or 0),
            sweep_s=float(_env("SWEEP_S", "5") or 5),
            queued_lost_after_s=float(_env("QUEUED_LOST_AFTER_S", "600") or 600),
            max_cutouts=int(_env("MAX_CUTOUTS", "1000") or 1000),
            max_job_bytes=int(_env("MAX_JOB_BYTES", str(2 * 1024**3)) or 2 * 1024**3),
            status_cache_s=float(_env("STATUS_CACHE_S", "1") or 0),
            title=_env("TITLE", Settings.title) or Settings.title,
            publisher=_env("PUBLISHER"),
            contact_name=_env("CONTACT_NAME", Settings.contact_name) or Settings.contact_name,
            contact_email=_env("CONTACT_EMAIL"),
            registry_template=_path(_env("REGISTRY_TEMPLATE")),
            identifier=_env("IDENTIFIER"),
            publishing_registry=(_env("PUBLISHING_REGISTRY", "true") or "true").lower()
            in ("1", "true", "yes"),
            oai_page_size=min(max(int(_env("OAI_PAGE_SIZE", "100") or 100), 1), 1000),
            min_free_bytes=int(_env("MIN_FREE_BYTES", str(1024**3)) or 0),
            max_request_bytes=int(_env("MAX_REQUEST_BYTES", str(256 * 1024)) or 256 * 1024),
            max_active_jobs=int(_env("MAX_ACTIVE_JOBS", "100") or 100),
            job_rate_per_minute=float(_env("JOB_RATE_PER_MINUTE", "60") or 0),
            job_rate_burst=int(_env("JOB_RATE_BURST", "30") or 30),
            max_cutout_combinations=int(_env("MAX_CUTOUT_COMBINATIONS", "100") or 100),
            idle_timeout_s=float(_env("IDLE_TIMEOUT_S", "15") or 15),
            body_timeout_s=float(_env("BODY_TIMEOUT_S", "30") or 30),
        )

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]
