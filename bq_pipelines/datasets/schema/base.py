"""What every part of the declaration schema shares: strict frozen models, relative paths, and
the facts declared once for all datasets (source hosts, tile grids in `bq_pipelines/shared/`)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from bq_pipelines.lib import names
from bq_pipelines.lib.errors import ConfigError

SHARED_FILES = "bq_pipelines/shared"


class Strict(BaseModel):
    """A declaration part: unknown keys refused (a typo fails), values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def relative_path(value: str) -> str:
    """`value` if it is a path that stays under its root; ValueError saying why otherwise."""
    problem = names.relative_path_problem(value)
    if problem is not None:
        raise ValueError(f"{value!r}: {problem}")
    return value


@cache
def shared_hosts() -> dict[str, str]:
    """Source hosts and their base URLs, declared once in `shared/hosts.yaml`."""
    return _shared_mapping("hosts.yaml")


@cache
def shared_grids() -> dict[str, list[str]]:
    """Value lists shared by several datasets (tile grids), in `shared/grids.yaml`."""
    return _shared_mapping("grids.yaml")


def _shared_mapping(name: str) -> dict[str, Any]:
    text = (resources.files("bq_pipelines") / "shared" / name).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{SHARED_FILES}/{name}: must be a mapping")
    return data
