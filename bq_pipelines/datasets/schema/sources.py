"""Where a partition's input files are: a source (a shared host's path, a URL or a local path
template), and the variants that read another source or with other COG settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from bq_pipelines.datasets.schema.base import SHARED_FILES, Strict, shared_hosts
from bq_pipelines.datasets.schema.cog import CogOverrides
from bq_pipelines.lib import names


class Source(Strict):
    """Where one partition's input files are.

    `url`: template of a remote URL; `{host}` is not a variable, `host` names the source host
    whose base URL (default `base_url`) is prefixed, so mirrors override it by configuration.
    `local`: a path template under the configured local data root.
    """

    host: str | None = None
    base_url: str | None = None
    path: str | None = None  # appended to the host's base URL
    url: str | None = None  # a full URL template (no host override)
    local: str | None = None  # path template relative to the local data root
    subdataset: str | None = None
    bands: list[Annotated[int, Field(ge=1)]] | None = None

    @model_validator(mode="before")
    @classmethod
    def _base_url_of_a_shared_host(cls, raw: Any) -> Any:
        # A host of shared/hosts.yaml brings its base URL; a dataset may not redeclare it
        # differently (mirrors are configuration: BQ_SOURCE_BASE_URLS).
        if not isinstance(raw, dict) or raw.get("host") not in shared_hosts():
            return raw
        declared = shared_hosts()[raw["host"]]
        given = raw.get("base_url")
        if given is not None and given.rstrip("/") != declared.rstrip("/"):
            raise ValueError(
                f"base_url: host {raw['host']!r} is declared in {SHARED_FILES}/hosts.yaml "
                f"with {declared}; drop base_url (a mirror is set with BQ_SOURCE_BASE_URLS)"
            )
        return {**raw, "base_url": declared}

    @model_validator(mode="after")
    def _one_location(self) -> Source:
        given = [name for name in ("path", "url", "local") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(f"set exactly one of path (with host), url or local; got {given}")
        if self.path and not (self.host and self.base_url):
            raise ValueError(
                f"path needs a host of {SHARED_FILES}/hosts.yaml (or host and base_url)"
            )
        if self.base_url is not None:
            problem = names.url_path_problem(self.base_url)
            if problem is not None:
                raise ValueError(f"base_url: {problem}")
        return self

    @property
    def kind(self) -> Literal["path", "url", "local"]:
        return "path" if self.path else "url" if self.url else "local"

    @property
    def template(self) -> str:
        return self.path or self.url or self.local or ""

    def location_problem(self, rendered: str) -> str | None:
        """Why a rendered location cannot be read safely: a local path or a host path must stay
        under its root (no '..', absolute path, backslash or NUL); a URL must not climb."""
        if self.kind == "url":
            return names.url_path_problem(rendered)
        return names.relative_path_problem(rendered)


class Condition(Strict):
    """A range of an integer template variable (inclusive bounds)."""

    min: int | None = None
    max: int | None = None


class Variant(Strict):
    """Partitions matching `when` read another source and/or with other COG settings (e.g.
    ESA CCI land cover: GeoTIFF up to 2015, NetCDF from 2016)."""

    when: dict[str, str | int | list[str | int] | Condition]
    source: Source | None = None
    cog: CogOverrides | None = None
    # Template variables of the matching partitions (ESA CCI's file names and versions).
    vars: dict[str, str | int | float] = Field(default_factory=dict)

    def matches(self, variables: Mapping[str, Any]) -> bool:
        return all(_matches(variables.get(name), test) for name, test in self.when.items())


def _matches(value: Any, test: Any) -> bool:
    if isinstance(test, Condition):
        return (
            isinstance(value, int)
            and (test.min is None or value >= test.min)
            and (test.max is None or value <= test.max)
        )
    if isinstance(test, list):
        return str(value) in {str(t) for t in test}
    return str(value) == str(test)
