"""Local sources stay under the data root, whatever form declares them: checked when the code
location loads, with the settings (data root, mirrors), over every partition rendered at load.

A declaration names a local file through `local:`, a `url:` that is a file:// URL (or a plain
path), or `host` + `path` whose base URL (declared, or a mirror in BQ_SOURCE_BASE_URLS) is a
file:// URL. Each is resolved, symlinks followed, and refused unless it lies under
BQ_LOCAL_DATA_ROOT (`lib.sources.confined_local_path`, the check fetches run again).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from bq_pipelines.datasets import validation
from bq_pipelines.datasets.plans import SourceLocations
from bq_pipelines.datasets.rendering import RenderedSource
from bq_pipelines.datasets.schema import Declaration, Source
from bq_pipelines.lib import sources
from bq_pipelines.lib.errors import ConfigError, SourceRefused

ROOT_SETTING = "BQ_LOCAL_DATA_ROOT"


def check_local_sources(declaration: Declaration, locations: SourceLocations) -> None:
    """ConfigError naming the field (or the mirror's setting) of the first local source that
    resolves outside the data root."""
    declared = [declaration.source, *declaration.sources]
    declared += [v.source for v in declaration.variants if v.source is not None]
    if not any(_may_be_local(source, locations.base_urls) for source in declared):
        return  # remote only: nothing to resolve (most partitions of the big datasets)
    for label, rendered in validation.sampled_sources(declaration):
        if not _may_be_local(rendered.source, locations.base_urls):
            continue
        try:
            location = locations.resolve(rendered)
            if sources.is_local(location):
                sources.confined_local_path(location, locations.local_root, ROOT_SETTING)
        except SourceRefused as error:
            raise ConfigError(
                f"{declaration.id}/defs.yaml: {_field(rendered, locations.base_urls)}: "
                f"{error.url!r} {error.reason} (partition {label})"
            ) from None


def _may_be_local(source: Source, base_urls: Mapping[str, str]) -> bool:
    if source.kind == "local":
        return True
    if source.kind == "url":
        return _is_file_url(source.template)
    return _is_file_url(_base_url(source, base_urls))


def _is_file_url(template: str) -> bool:
    # The scheme comes before any `{variable}`; no scheme at all is a plain path.
    return urlsplit(template.split("{", 1)[0]).scheme.lower() in ("", "file")


def _base_url(source: Source, base_urls: Mapping[str, str]) -> str:
    return base_urls.get(source.host or "", source.base_url or "")


def _field(rendered: RenderedSource, base_urls: Mapping[str, str]) -> str:
    source = rendered.source
    field = f"{rendered.label}.{source.kind}"
    if source.kind != "path":
        return field
    if source.host in base_urls:
        return f"BQ_SOURCE_BASE_URLS[{source.host}] (the base URL of {field})"
    return f"{rendered.label}.base_url (of host {source.host!r})"
