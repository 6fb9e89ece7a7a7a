"""Project settings from environment variables (BQ_*), validated with errors naming the variable.

Defaults are the embedded ones: objects in a local folder, a static catalog on disk, everything
under `.bq/`. `. .bq/services.env` (written by `make services`) points them at real services.
Secrets (AWS keys, the STAC API token) are never read here: Dagster's EnvVar reads them at run
time so they never appear in configuration, logs or errors.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from bq_pipelines.backup.postgres import parse_dsn
from bq_pipelines.ingestion.url_policy import parse_prefix
from bq_pipelines.lib.errors import ConfigError, SourceRefused
from bq_pipelines.lib.redaction import has_userinfo, redact_url
from bq_pipelines.lib.sources import confined_local_path

ObjectStoreKind = Literal["local", "s3"]
CatalogKind = Literal["static", "stac-api"]
ExecutorKind = Literal["multiprocess", "celery"]
# The broker URL may carry a password: it is read by the executor through Dagster's `env`
# config at run time, never stored here.
CELERY_BROKER_ENV = "BQ_CELERY_BROKER_URL"
CELERY_BACKEND_ENV = "BQ_CELERY_BACKEND_URL"
SOURCE_SCHEMES = ("http", "https", "ftp", "file", "s3")
# Above the largest declared source (ESA CCI land cover, 129,600 x 64,800 = 8.4 G pixels), below
# a crafted 100,000 x 100,000 header.
DEFAULT_MAX_PIXELS = 9_000_000_000
DEFAULT_MAX_DOWNLOAD_BYTES = 16 * 1024**3


@dataclass(frozen=True)
class Settings:
    home: Path = Path(".bq")
    object_store: ObjectStoreKind = "local"
    objects_dir: Path = Path(".bq/objects")
    object_prefix: str = "io"
    public_base_url: str | None = None
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_public_read: bool = False
    catalog: CatalogKind = "static"
    catalog_dir: Path = Path(".bq/catalog")
    stac_api_url: str | None = None
    work_dir: Path = Path(".bq/work")
    local_data_root: Path = Path(".bq/sources")
    source_base_urls: Mapping[str, str] = field(default_factory=dict)
    max_pixels: int = DEFAULT_MAX_PIXELS  # of one converted raster: width x height x bands
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES  # of one downloaded source
    # Processes producing the items of one many-band source; 0: one per CPU this process may use.
    item_workers: int = 0
    stac_schemas_dir: Path | None = None
    pgstac_dsn: str | None = field(default=None, repr=False)  # may hold a password
    pg_bin_dir: Path | None = None
    backup_time: tuple[int, int] = (4, 0)  # (hour, minute), UTC
    # Off unless asked for (the production stack does): a laptop's daemon takes no 04:00 backups.
    backup_schedule_enabled: bool = False
    backup_retention_days: int = 30
    backup_keep_last: int = 7
    backup_retention_dry_run: bool = False
    executor: ExecutorKind = "multiprocess"
    # Longer than any step (one batch of partitions): an unacknowledged step is handed to another
    # worker after this long (a worker that died mid-step).
    celery_visibility_timeout_s: int = 6 * 3600
    # titiler-pgstac serving the catalog's COGs: items link to their map viewer, collections
    # to a mosaic (none without it).
    tiler_url: str | None = None
    # An http server of the static catalog and local objects (`make browse`): the links
    # recorded in metadata then open from the UI instead of being file:// paths.
    browse_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read BQ_* variables; ConfigError names the variable and the reason."""
        home = Path(env.get("BQ_HOME", ".bq"))
        settings = cls(
            home=home,
            object_store=_choice(env, "BQ_OBJECT_STORE", ("local", "s3"), "local"),
            objects_dir=Path(env.get("BQ_OBJECTS_DIR", home / "objects")),
            object_prefix=env.get("BQ_S3_PREFIX", "io").strip("/"),
            public_base_url=_url(env, "BQ_PUBLIC_BASE_URL"),
            s3_bucket=env.get("BQ_S3_BUCKET") or None,
            s3_endpoint_url=_url(env, "BQ_S3_ENDPOINT_URL"),
            s3_region=env.get("BQ_S3_REGION", "us-east-1"),
            s3_public_read=_boolean(env, "BQ_S3_PUBLIC_READ", False),
            catalog=_choice(env, "BQ_CATALOG", ("static", "stac-api"), "static"),
            catalog_dir=Path(env.get("BQ_CATALOG_DIR", home / "catalog")),
            stac_api_url=_url(env, "BQ_STAC_API_URL"),
            work_dir=Path(env.get("BQ_WORK_DIR", home / "work")),
            local_data_root=Path(env.get("BQ_LOCAL_DATA_ROOT", home / "sources")),
            source_base_urls=_host_map(env, "BQ_SOURCE_BASE_URLS"),
            max_pixels=int(_number(env, "BQ_MAX_PIXELS", DEFAULT_MAX_PIXELS, 1, 2**50)),
            max_download_bytes=int(
                _number(env, "BQ_MAX_DOWNLOAD_BYTES", DEFAULT_MAX_DOWNLOAD_BYTES, 1, 2**50)
            ),
            item_workers=_integer(env, "BQ_ITEM_WORKERS", 0, minimum=0),
            stac_schemas_dir=_existing_dir(env, "BQ_STAC_SCHEMAS_DIR"),
            pgstac_dsn=_dsn(env, "BQ_PGSTAC_DSN"),
            pg_bin_dir=_existing_dir(env, "BQ_PG_BIN_DIR"),
            backup_time=_time_of_day(env, "BQ_BACKUP_TIME", (4, 0)),
            backup_schedule_enabled=_boolean(env, "BQ_BACKUP_SCHEDULE_ENABLED", False),
            backup_retention_days=_integer(env, "BQ_BACKUP_RETENTION_DAYS", 30, minimum=1),
            backup_keep_last=_integer(env, "BQ_BACKUP_KEEP_LAST", 7, minimum=1),
            backup_retention_dry_run=_boolean(env, "BQ_BACKUP_RETENTION_DRY_RUN", False),
            executor=_choice(env, "BQ_EXECUTOR", ("multiprocess", "celery"), "multiprocess"),
            celery_visibility_timeout_s=_integer(
                env, "BQ_CELERY_VISIBILITY_TIMEOUT", 6 * 3600, minimum=1
            ),
            tiler_url=_url(env, "BQ_TILER_URL"),
            browse_url=_url(env, "BQ_BROWSE_URL"),
        )
        if settings.public_base_url and has_userinfo(settings.public_base_url):
            # Every item's href starts with it: credentials would be published with them.
            raise ConfigError("BQ_PUBLIC_BASE_URL: must not carry credentials (user:password@)")
        if settings.s3_endpoint_url and has_userinfo(settings.s3_endpoint_url):
            # S3 ignores them, and botocore's errors quote the endpoint.
            raise ConfigError(
                "BQ_S3_ENDPOINT_URL: must not carry credentials (use AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY)"
            )
        for name, url in (
            ("BQ_TILER_URL", settings.tiler_url),
            ("BQ_BROWSE_URL", settings.browse_url),
        ):
            if url and has_userinfo(url):
                # Written into every partition's metadata: nothing secret may ride along.
                raise ConfigError(f"{name}: must not carry credentials (user:password@)")
        _check_local_mirrors(settings)
        if settings.object_store == "s3" and not settings.s3_bucket:
            raise ConfigError("BQ_S3_BUCKET: required when BQ_OBJECT_STORE=s3")
        if settings.catalog == "stac-api" and not settings.stac_api_url:
            raise ConfigError("BQ_STAC_API_URL: required when BQ_CATALOG=stac-api")
        if settings.executor == "celery":
            for name in (CELERY_BROKER_ENV, CELERY_BACKEND_ENV):
                if not env.get(name):
                    raise ConfigError(f"{name}: required when BQ_EXECUTOR=celery")
        return settings


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str):
    value = env.get(name, default) or default
    if value not in allowed:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _boolean(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: {value!r} is not a boolean (true/false)")


def _integer(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    value = env.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not a whole number") from None
    if number < minimum:
        raise ConfigError(f"{name}: {number} is below the minimum {minimum}")
    return number


def _time_of_day(env: Mapping[str, str], name: str, default: tuple[int, int]) -> tuple[int, int]:
    value = (env.get(name) or "").strip()
    if not value:
        return default
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", value)
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise ConfigError(f"{name}: {value!r} is not a time of day HH:MM (UTC, 00:00 to 23:59)")
    return int(match[1]), int(match[2])


def _dsn(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name) or None
    if value is not None:
        parse_dsn(value, name)  # the error never echoes the value: it may hold a password
    return value


def _url(
    env: Mapping[str, str], name: str, schemes: tuple[str, ...] = ("http", "https")
) -> str | None:
    value = env.get(name) or None
    if value is None:
        return None
    parsed = urlparse(value)
    if parsed.scheme not in schemes or not (parsed.netloc or parsed.scheme == "file"):
        shown = redact_url(value)  # a URL may carry a password: never echoed
        raise ConfigError(f"{name}: {shown!r} is not a URL of scheme {'/'.join(schemes)}")
    return value.rstrip("/")


def _host_map(env: Mapping[str, str], name: str) -> dict[str, str]:
    """`host=url,host=url` -> mapping; each URL checked like any other URL setting."""
    raw = env.get(name, "").strip()
    mapping: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in raw.split(","))):
        host, sep, url = entry.partition("=")
        if not sep or not host:
            raise ConfigError(f"{name}: {redact_url(entry)!r} is not host=url")
        label = f"{name}[{host.strip()}]"
        mapping[host.strip()] = _url({label: url.strip()}, label, SOURCE_SCHEMES) or ""
    return mapping


def _check_local_mirrors(settings: Settings) -> None:
    """A mirror that is a folder (file://) must lie under BQ_LOCAL_DATA_ROOT, symlinks
    resolved: nothing outside the data root is ever read."""
    for host, url in settings.source_base_urls.items():
        if urlparse(url).scheme != "file":
            continue
        try:
            confined_local_path(url, settings.local_data_root, "BQ_LOCAL_DATA_ROOT")
        except SourceRefused as error:
            raise ConfigError(
                f"BQ_SOURCE_BASE_URLS[{host}]: {error.url!r} {error.reason}"
            ) from None


def _existing_dir(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name) or None
    if value is None:
        return None
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(f"{name}: {value!r} is not a directory")
    return path


# --------------------------------------------------------------------------- ingestion API

API_TOKEN_ENV = "BQ_API_TOKEN"
API_DATABASE_ENV = "BQ_API_DATABASE_URL"
MIN_TOKEN_LENGTH = 16
# `make dev` and `make ui` listen on BQ_UI_PORT; the API links its runs there by default.
UI_PORT_ENV = "BQ_UI_PORT"
DEFAULT_UI_PORT = 3000


@dataclass(frozen=True)
class ApiSettings:
    """The ingestion API's settings (BQ_API_*; see the README). Its token is a secret and is not
    kept here: `api_token(env)` reads it where it is needed. The database URL may carry a
    password, so it is left out of the repr."""

    host: str = "127.0.0.1"
    port: int = 8083
    workers: int = 1
    database_url: str = field(default="sqlite:///.bq/api/requests.sqlite", repr=False)
    database_from_env: bool = False
    public_status: bool = False
    allowed_sources: tuple[str, ...] = ()
    stac_api_aliases: tuple[str, ...] = ()
    max_body_bytes: int = 64 * 1024
    max_download_bytes: int = 4 * 1024**3
    download_timeout_seconds: float = 1800.0
    max_pixels: int = 4_000_000_000
    dagster_ui_url: str = f"http://127.0.0.1:{DEFAULT_UI_PORT}"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ApiSettings:
        home = Path(env.get("BQ_HOME", ".bq"))
        database_url = env.get(API_DATABASE_ENV) or None
        if database_url is not None and not database_url.startswith(("postgresql", "sqlite")):
            raise ConfigError(
                f"{API_DATABASE_ENV}: not a postgresql:// or sqlite:/// URL "
                "(e.g. postgresql://user@host:5432/db)"
            )
        allowed = _list(env, "BQ_API_ALLOWED_SOURCES")
        for index, prefix in enumerate(allowed):
            try:
                parse_prefix(prefix)
            except ValueError as error:
                raise ConfigError(f"BQ_API_ALLOWED_SOURCES[{index}]: {error}") from None
        aliases = tuple(
            _url({f"BQ_API_STAC_API_ALIASES[{i}]": a}, f"BQ_API_STAC_API_ALIASES[{i}]") or ""
            for i, a in enumerate(_list(env, "BQ_API_STAC_API_ALIASES"))
        )
        return cls(
            host=env.get("BQ_API_HOST") or "127.0.0.1",
            port=int(_number(env, "BQ_API_PORT", 8083, 1, 65535)),
            workers=int(_number(env, "BQ_API_WORKERS", 1, 1, 64)),
            database_url=database_url or f"sqlite:///{(home / 'api' / 'requests.sqlite')}",
            database_from_env=database_url is not None,
            public_status=_boolean(env, "BQ_API_PUBLIC_STATUS", False),
            allowed_sources=allowed,
            stac_api_aliases=aliases,
            max_body_bytes=int(_number(env, "BQ_API_MAX_BODY_BYTES", 64 * 1024, 1024, 2**24)),
            max_download_bytes=int(
                _number(env, "BQ_API_MAX_DOWNLOAD_BYTES", 4 * 1024**3, 1, 2**50)
            ),
            download_timeout_seconds=_number(
                env, "BQ_API_DOWNLOAD_TIMEOUT_SECONDS", 1800.0, 1, 7 * 86400
            ),
            max_pixels=int(_number(env, "BQ_API_MAX_PIXELS", 4_000_000_000, 1, 2**50)),
            dagster_ui_url=_url(env, "BQ_DAGSTER_UI_URL") or local_ui_url(env),
        )


def local_ui_url(env: Mapping[str, str]) -> str:
    """The Dagster UI that `make dev`/`make ui` serve on this machine (port BQ_UI_PORT)."""
    port = int(_number(env, UI_PORT_ENV, DEFAULT_UI_PORT, 1, 65535))
    return f"http://127.0.0.1:{port}"


def api_token(env: Mapping[str, str]) -> str:
    """The bearer token POST /newitem requires (from the environment only, never logged)."""
    token = env.get(API_TOKEN_ENV) or ""
    if not token:
        raise ConfigError(
            f"{API_TOKEN_ENV}: required by the ingestion API (a long random string, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    if len(token) < MIN_TOKEN_LENGTH or token != token.strip():
        raise ConfigError(
            f"{API_TOKEN_ENV}: too short or padded with spaces "
            f"(at least {MIN_TOKEN_LENGTH} characters)"
        )
    return token


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(filter(None, (part.strip() for part in env.get(name, "").split(","))))


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not a number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: {raw!r} is outside {low:g}..{high:g}")
    return value


def current_settings() -> Settings:
    """The settings of this process's environment, read once (every dataset, the backup and
    the resources of a code location share them), again only when a BQ_* variable changes."""
    return _settings_of(_environment())


def current_api_settings() -> ApiSettings:
    """The ingestion API's settings of this process's environment, read once."""
    return _api_settings_of(_environment())


def _environment() -> tuple[tuple[str, str], ...]:
    return tuple(sorted(os.environ.items()))


@functools.lru_cache(maxsize=4)
def _settings_of(environment: tuple[tuple[str, str], ...]) -> Settings:
    return Settings.from_env(dict(environment))


@functools.lru_cache(maxsize=4)
def _api_settings_of(environment: tuple[tuple[str, str], ...]) -> ApiSettings:
    return ApiSettings.from_env(dict(environment))
