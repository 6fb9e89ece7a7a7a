"""A catalog opened for reading only: another deployment's STAC API, or a copy of a static
catalog (the legacy one), to compare what it publishes with what a dataset plans."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from bq_pipelines.lib.catalog.base import Publisher
from bq_pipelines.lib.catalog.stac_api import StacApiPublisher
from bq_pipelines.lib.catalog.static import StaticCatalogPublisher
from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.lib.redaction import redact_url


def open_catalog(location: str) -> Publisher:
    """A STAC API at an http(s) URL, or a static catalog given by the path (or file:// URL)
    of its `catalog.json` or of its folder. ConfigError naming the location otherwise."""
    parsed = urlparse(location)
    if parsed.scheme in ("http", "https"):
        if parsed.path.endswith(".json"):
            raise ConfigError(
                f"catalog {redact_url(location)}: read a static catalog from a local copy (the "
                "path of its catalog.json); a STAC API is given by its root URL"
            )
        return StacApiPublisher(location)
    path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(location)
    root = path.parent if path.suffix == ".json" else path
    if not (root / "catalog.json").is_file():
        raise ConfigError(f"catalog {location}: no catalog.json there (nor a STAC API URL)")
    return StaticCatalogPublisher(root)
