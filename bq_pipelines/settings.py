"""Project settings from environment variables (BQ_*), validated with errors naming the variable.

Defaults are the embedded ones: objects in a local folder, a static catalog on disk, everything
under `.bq/`. `. .bq/services.env` (written by `make services`) points them at real services.
Secrets (AWS keys, the STAC API token) are never read here: Dagster's EnvVar reads them at run
time so they never appear in configuration, logs or errors.

pydantic-settings reads the variables (`BQ_` + the field's name unless a field names its
variable); the validators here parse each value the way the README documents it, and the rules
across fields are ours. `Settings()` are the embedded defaults, `Settings.from_env(env)` reads a
mapping, `current_settings()` this process's environment (read once).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlparse

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from bq_pipelines.lib.errors import ConfigError, SourceRefused
from bq_pipelines.lib.postgres_dsn import parse_dsn
from bq_pipelines.lib.redaction import has_userinfo, redact_url
from bq_pipelines.lib.sources import confined_local_path
from bq_pipelines.lib.url_policy import parse_prefix

ObjectStoreKind = Literal["local", "s3"]
CatalogKind = Literal["static", "stac-api"]
ExecutorKind = Literal["multiprocess", "celery"]
# The broker URL may carry a password: it is read by the executor through Dagster's `env`
# config at run time, never stored here.
CELERY_BROKER_ENV = "BQ_CELERY_BROKER_URL"
CELERY_BACKEND_ENV = "BQ_CELERY_BACKEND_URL"
SOURCE_SCHEMES = ("http", "https", "ftp", "file", "s3")
WEB_SCHEMES = ("http", "https")
# Above the largest declared source (ESA CCI land cover, 129,600 x 64,800 = 8.4 G pixels), below
# a crafted 100,000 x 100,000 header.
DEFAULT_MAX_PIXELS = 9_000_000_000
DEFAULT_MAX_DOWNLOAD_BYTES = 16 * 1024**3
MAX_COUNT = 2**50

# --------------------------------------------------------------------------- value parsers
# Each turns the variable's text into the field's value, or raises ValueError with the reason
# (the variable's name is added from the field: see `_config_error`). A value that is not text
# (a keyword argument of `Settings(...)`) is left to the field's type. An empty variable means
# "unset" unless said otherwise.


def _parser(parse: Callable[[str], Any]) -> BeforeValidator:
    return BeforeValidator(lambda value: parse(value) if isinstance(value, str) else value)


def _choice(allowed: tuple[str, ...], default: str) -> BeforeValidator:
    def parse(text: str) -> str:
        value = text or default
        if value not in allowed:
            raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
        return value

    return _parser(parse)


def _boolean(default: bool) -> BeforeValidator:
    def parse(text: str) -> bool:
        if text == "":
            return default
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{text!r} is not a boolean (true/false)")

    return _parser(parse)


def _integer(default: int, *, minimum: int) -> BeforeValidator:
    def parse(text: str) -> int:
        if text.strip() == "":
            return default
        try:
            number = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if number < minimum:
            raise ValueError(f"{number} is below the minimum {minimum}")
        return number

    return _parser(parse)


def _number(default: float, low: float, high: float) -> BeforeValidator:
    return _parser(lambda text: _in_range(text, default, low, high))


def _in_range(text: str, default: float, low: float, high: float) -> float:
    if text.strip() == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not low <= value <= high:
        raise ValueError(f"{text!r} is outside {low:g}..{high:g}")
    return value


def _checked_url(text: str, schemes: tuple[str, ...] = WEB_SCHEMES) -> str:
    parsed = urlparse(text)
    if parsed.scheme not in schemes or not (parsed.netloc or parsed.scheme == "file"):
        shown = redact_url(text)  # a URL may carry a password: never echoed
        raise ValueError(f"{shown!r} is not a URL of scheme {'/'.join(schemes)}")
    return text.rstrip("/")


def _time_of_day(text: str) -> tuple[int, int] | str:
    value = text.strip()
    if not value:
        return "04:00"  # the default, parsed below
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", value)
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError(f"{value!r} is not a time of day HH:MM (UTC, 00:00 to 23:59)")
    return int(match[1]), int(match[2])


def _host_map(text: str) -> dict[str, str]:
    """`host=url,host=url` -> mapping (each URL then checked as a URL of SOURCE_SCHEMES)."""
    mapping: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        host, sep, url = entry.partition("=")
        if not sep or not host:
            raise ValueError(f"{redact_url(entry)!r} is not host=url")
        mapping[host.strip()] = url.strip()
    return mapping


def _items(text: str) -> tuple[str, ...]:
    return tuple(filter(None, (part.strip() for part in text.split(","))))


def _existing_dir(path: Path | None) -> Path | None:
    if path is not None and not path.is_dir():
        raise ValueError(f"{str(path)!r} is not a directory")
    return path


def _dsn(dsn: str | None) -> str | None:
    if dsn is not None:
        try:
            parse_dsn(dsn, "")  # the error never echoes the value: it may hold a password
        except ConfigError as error:
            raise ValueError(str(error).removeprefix(": ")) from None
    return dsn


def _allowed_source(prefix: str) -> str:
    parse_prefix(prefix)  # ValueError saying what is wrong
    return prefix


_Unset = BeforeValidator(lambda value: None if value == "" else value)
Url = Annotated[str | None, AfterValidator(lambda v: v and _checked_url(v)), _Unset]
SourceUrl = Annotated[str, AfterValidator(lambda v: _checked_url(v, SOURCE_SCHEMES))]
OptionalDir = Annotated[Path | None, AfterValidator(_existing_dir), _Unset]
# A count parsed as a number (`1e9` is accepted), kept whole.
Count = int


# --------------------------------------------------------------------------- reading a mapping


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._env, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


class _EnvSettings(BaseSettings):
    """Settings read from a mapping by `from_env`; constructed directly, only from keywords
    (never from `os.environ` behind the caller's back)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Self:
        """Read the variables of `env`; ConfigError names each bad variable and the reason."""
        names = {
            field.validation_alias: name
            for name, field in cls.model_fields.items()
            if isinstance(field.validation_alias, str)
        }
        values = {names.get(key, key): value for key, value in _MappingSource(cls, env)().items()}
        try:
            settings = cls(**values)
        except ValidationError as error:
            raise ConfigError(_config_error(cls, error)) from None
        settings._check_rules(env)
        return settings

    def _check_rules(self, env: Mapping[str, str]) -> None:
        """The rules across variables (ours: ConfigError naming them), checked on what the
        environment says (settings built in code, e.g. for a test, skip them)."""

    @classmethod
    def variable(cls, field_name: str) -> str:
        """The environment variable of a field."""
        alias = cls.model_fields[field_name].validation_alias
        if isinstance(alias, str):
            return alias
        return f"{cls.model_config.get('env_prefix', '')}{field_name.upper()}"


def _config_error(settings_cls: type[_EnvSettings], error: ValidationError) -> str:
    """`VARIABLE: reason` for each error (`VARIABLE[key]` for an entry of a list or mapping);
    the value itself is never quoted from pydantic (it may be a secret)."""
    lines = []
    for detail in error.errors(include_input=False, include_url=False):
        cause = (detail.get("ctx") or {}).get("error")
        reason = str(cause) if isinstance(cause, Exception) else detail["msg"]
        location = detail["loc"]
        if not location:  # a rule across fields names its variables itself
            lines.append(reason)
            continue
        field_name = str(location[0])
        variable = (
            settings_cls.variable(field_name)
            if field_name in settings_cls.model_fields
            else field_name
        )
        variable += "".join(f"[{part}]" for part in location[1:])
        lines.append(f"{variable}: {reason}")
    return "; ".join(lines)


def _derived(data: Any, defaults: Mapping[str, Callable[[Path], Any]]) -> Any:
    """Fill the defaults that depend on BQ_HOME (a field left out, not one set empty)."""
    if not isinstance(data, dict):
        return data
    home = Path(data.get("home", ".bq"))
    return {**{name: make(home) for name, make in defaults.items()}, **data}


# --------------------------------------------------------------------------- the pipelines


class Settings(_EnvSettings):
    model_config = SettingsConfigDict(
        env_prefix="BQ_", frozen=True, validate_by_name=True, extra="forbid"
    )

    home: Path = Path(".bq")
    object_store: Annotated[ObjectStoreKind, _choice(("local", "s3"), "local")] = "local"
    objects_dir: Path = Path(".bq/objects")
    object_prefix: Annotated[str, _parser(lambda text: text.strip("/"))] = Field(
        default="io", validation_alias="BQ_S3_PREFIX"
    )
    public_base_url: Url = None
    s3_bucket: Annotated[str | None, _Unset] = None
    s3_endpoint_url: Url = None
    s3_region: str = "us-east-1"
    s3_public_read: Annotated[bool, _boolean(False)] = False
    catalog: Annotated[CatalogKind, _choice(("static", "stac-api"), "static")] = "static"
    catalog_dir: Path = Path(".bq/catalog")
    stac_api_url: Url = None
    work_dir: Path = Path(".bq/work")
    local_data_root: Path = Path(".bq/sources")
    source_base_urls: Annotated[dict[str, SourceUrl], NoDecode, _parser(_host_map)] = Field(
        default_factory=dict
    )
    # Of one converted raster: width x height x bands.
    max_pixels: Annotated[Count, _number(DEFAULT_MAX_PIXELS, 1, MAX_COUNT)] = DEFAULT_MAX_PIXELS
    # Of one downloaded source.
    max_download_bytes: Annotated[Count, _number(DEFAULT_MAX_DOWNLOAD_BYTES, 1, MAX_COUNT)] = (
        DEFAULT_MAX_DOWNLOAD_BYTES
    )
    # Processes producing the items of one many-band source; 0: one per CPU this process may use.
    item_workers: Annotated[int, _integer(0, minimum=0)] = 0
    stac_schemas_dir: OptionalDir = None
    # May hold a password: not in the repr.
    pgstac_dsn: Annotated[str | None, AfterValidator(_dsn), _Unset] = Field(
        default=None, repr=False
    )
    pg_bin_dir: OptionalDir = None
    # (hour, minute), UTC
    backup_time: Annotated[tuple[int, int], NoDecode, _parser(_time_of_day)] = (4, 0)
    # Off unless asked for (the production stack does): a laptop's daemon takes no 04:00 backups.
    backup_schedule_enabled: Annotated[bool, _boolean(False)] = False
    backup_retention_days: Annotated[int, _integer(30, minimum=1)] = 30
    backup_keep_last: Annotated[int, _integer(7, minimum=1)] = 7
    backup_retention_dry_run: Annotated[bool, _boolean(False)] = False
    executor: Annotated[ExecutorKind, _choice(("multiprocess", "celery"), "multiprocess")] = (
        "multiprocess"
    )
    # Longer than any step (one batch of partitions): an unacknowledged step is handed to another
    # worker after this long (a worker that died mid-step).
    celery_visibility_timeout_s: Annotated[int, _integer(6 * 3600, minimum=1)] = Field(
        default=6 * 3600, validation_alias="BQ_CELERY_VISIBILITY_TIMEOUT"
    )
    # titiler-pgstac serving the catalog's COGs: items link to their map viewer, collections
    # to a mosaic (none without it).
    tiler_url: Url = None
    # An http server of the static catalog and local objects (`make browse`): the links
    # recorded in metadata then open from the UI instead of being file:// paths.
    browse_url: Url = None

    @model_validator(mode="before")
    @classmethod
    def _under_home(cls, data: Any) -> Any:
        return _derived(
            data,
            {
                "objects_dir": lambda home: home / "objects",
                "catalog_dir": lambda home: home / "catalog",
                "work_dir": lambda home: home / "work",
                "local_data_root": lambda home: home / "sources",
            },
        )

    def _check_rules(self, env: Mapping[str, str]) -> None:
        if self.public_base_url and has_userinfo(self.public_base_url):
            # Every item's href starts with it: credentials would be published with them.
            raise ConfigError("BQ_PUBLIC_BASE_URL: must not carry credentials (user:password@)")
        if self.s3_endpoint_url and has_userinfo(self.s3_endpoint_url):
            # S3 ignores them, and botocore's errors quote the endpoint.
            raise ConfigError(
                "BQ_S3_ENDPOINT_URL: must not carry credentials (use AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY)"
            )
        for name, url in (("BQ_TILER_URL", self.tiler_url), ("BQ_BROWSE_URL", self.browse_url)):
            if url and has_userinfo(url):
                # Written into every partition's metadata: nothing secret may ride along.
                raise ConfigError(f"{name}: must not carry credentials (user:password@)")
        self._check_local_mirrors()
        if self.object_store == "s3" and not self.s3_bucket:
            raise ConfigError("BQ_S3_BUCKET: required when BQ_OBJECT_STORE=s3")
        if self.catalog == "stac-api" and not self.stac_api_url:
            raise ConfigError("BQ_STAC_API_URL: required when BQ_CATALOG=stac-api")
        if self.executor == "celery":
            for name in (CELERY_BROKER_ENV, CELERY_BACKEND_ENV):
                if not env.get(name):
                    raise ConfigError(f"{name}: required when BQ_EXECUTOR=celery")

    def _check_local_mirrors(self) -> None:
        """A mirror that is a folder (file://) must lie under BQ_LOCAL_DATA_ROOT, symlinks
        resolved: nothing outside the data root is ever read."""
        for host, url in self.source_base_urls.items():
            if urlparse(url).scheme != "file":
                continue
            try:
                confined_local_path(url, self.local_data_root, "BQ_LOCAL_DATA_ROOT")
            except SourceRefused as error:
                raise ConfigError(
                    f"BQ_SOURCE_BASE_URLS[{host}]: {error.url!r} {error.reason}"
                ) from None


# --------------------------------------------------------------------------- ingestion API

API_TOKEN_ENV = "BQ_API_TOKEN"
API_DATABASE_ENV = "BQ_API_DATABASE_URL"
MIN_TOKEN_LENGTH = 16
# `make dev` and `make ui` listen on BQ_UI_PORT; the API links its runs there by default.
UI_PORT_ENV = "BQ_UI_PORT"
DEFAULT_UI_PORT = 3000


def _database_url(url: str | None) -> str | None:
    if url is not None and not url.startswith(("postgresql", "sqlite")):
        raise ValueError(
            "not a postgresql:// or sqlite:/// URL (e.g. postgresql://user@host:5432/db)"
        )
    return url


class ApiSettings(_EnvSettings):
    """The ingestion API's settings (BQ_API_*; see the README). Its token is a secret and is not
    kept here: `api_token(env)` reads it where it is needed. The database URL may carry a
    password, so it is left out of the repr."""

    model_config = SettingsConfigDict(
        env_prefix="BQ_API_", frozen=True, validate_by_name=True, extra="forbid"
    )

    home: Path = Field(default=Path(".bq"), validation_alias="BQ_HOME", repr=False)
    host: Annotated[str, _parser(lambda text: text or "127.0.0.1")] = "127.0.0.1"
    port: Annotated[Count, _number(8083, 1, 65535)] = 8083
    workers: Annotated[Count, _number(1, 1, 64)] = 1
    database_url: Annotated[str, AfterValidator(_database_url)] = Field(
        default="sqlite:///.bq/api/requests.sqlite", repr=False
    )
    # Whether BQ_API_DATABASE_URL chose the database (not the default under BQ_HOME).
    database_from_env: bool = False
    public_status: Annotated[bool, _boolean(False)] = False
    allowed_sources: Annotated[
        tuple[Annotated[str, AfterValidator(_allowed_source)], ...], NoDecode, _parser(_items)
    ] = ()
    stac_api_aliases: Annotated[
        tuple[Annotated[str, AfterValidator(_checked_url)], ...], NoDecode, _parser(_items)
    ] = ()
    max_body_bytes: Annotated[Count, _number(64 * 1024, 1024, 2**24)] = 64 * 1024
    max_download_bytes: Annotated[Count, _number(4 * 1024**3, 1, MAX_COUNT)] = 4 * 1024**3
    download_timeout_seconds: Annotated[float, _number(1800.0, 1, 7 * 86400)] = 1800.0
    max_pixels: Annotated[Count, _number(4_000_000_000, 1, MAX_COUNT)] = 4_000_000_000
    ui_port: Annotated[Count, _number(DEFAULT_UI_PORT, 1, 65535)] = Field(
        default=DEFAULT_UI_PORT, validation_alias=UI_PORT_ENV, repr=False
    )
    dagster_ui_url: Annotated[str, AfterValidator(_checked_url)] = Field(
        default=f"http://127.0.0.1:{DEFAULT_UI_PORT}", validation_alias="BQ_DAGSTER_UI_URL"
    )

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("database_url"):
            data["database_from_env"] = True
        else:
            home = Path(data.get("home") or ".bq")
            data["database_url"] = f"sqlite:///{home / 'api' / 'requests.sqlite'}"
            data["database_from_env"] = False
        if not data.get("dagster_ui_url"):
            try:
                data["dagster_ui_url"] = _local_ui_url(data.get("ui_port", ""))
            except ValueError:
                data["dagster_ui_url"] = _local_ui_url(DEFAULT_UI_PORT)  # ui_port says why
        return data


def _local_ui_url(port: object) -> str:
    """The Dagster UI `make dev`/`make ui` serve on this machine (port BQ_UI_PORT); ValueError
    for a bad port (the field `ui_port` reports it with its variable)."""
    number = port if isinstance(port, int) else _in_range(str(port), DEFAULT_UI_PORT, 1, 65535)
    return f"http://127.0.0.1:{int(number)}"


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


# --------------------------------------------------------------------------- this process


def current_settings() -> Settings:
    """The settings of this process's environment, read once (every dataset, the backup and
    the resources of a code location share them), again only when a BQ_* variable changes."""
    return _settings_of(settings_environment())


def current_api_settings() -> ApiSettings:
    """The ingestion API's settings of this process's environment, read once."""
    return _api_settings_of(settings_environment())


def settings_environment() -> tuple[tuple[str, str], ...]:
    """The variables the settings read (BQ_*), sorted: what to key anything built from them on.
    A variable set by Dagster or a library is no reason to read them again."""
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith("BQ_")))


@functools.lru_cache(maxsize=4)
def _settings_of(environment: tuple[tuple[str, str], ...]) -> Settings:
    return Settings.from_env(dict(environment))


@functools.lru_cache(maxsize=4)
def _api_settings_of(environment: tuple[tuple[str, str], ...]) -> ApiSettings:
    return ApiSettings.from_env(dict(environment))
