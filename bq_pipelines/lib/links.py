"""Links a person follows from the UI: the published files over http when a browse server
(`make browse`) serves the embedded defaults' folders, and an item's or a collection's map on
the tile server when one is configured.

A browser will not open a `file://` link from a web page, so with a browse URL every link to a
file under a served folder becomes `<browse url>/<folder name>/<path>`; anything else (an http
href, a path elsewhere) is left as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

from bq_pipelines.lib import tiles

# The browse server's URL paths: /catalog/ (the static catalog), /objects/ (the local store).
BROWSE_FOLDERS = ("catalog", "objects")


@dataclass(frozen=True)
class Links:
    tiler_url: str | None = None
    browse_url: str | None = None
    # Served folder name (BROWSE_FOLDERS) -> its absolute path on this machine.
    browse_roots: Mapping[str, Path] = field(default_factory=dict)

    def browsable(self, href: str) -> str:
        """`href` over http when it is a file (path or file:// URL) under a served folder."""
        if not self.browse_url:
            return href
        parsed = urlparse(href)
        if parsed.scheme not in ("", "file"):
            return href
        path = Path(unquote(parsed.path) if parsed.scheme == "file" else href)
        for name, root in self.browse_roots.items():
            if path.is_absolute() and path.is_relative_to(root):
                relative = path.relative_to(root).as_posix()
                return f"{self.browse_url.rstrip('/')}/{name}/{quote(relative)}"
        return href

    def item_map(self, item: Mapping[str, Any]) -> str | None:
        """The item's map viewer on the tile server, or None without one."""
        return tiles.item_map_url(self.tiler_url, item) if self.tiler_url else None

    def collection_map(
        self, collection_id: str, sample_item: Mapping[str, Any] | None = None
    ) -> str | None:
        """A mosaic of the collection on the tile server, or None without one."""
        if not self.tiler_url:
            return None
        return tiles.collection_map_url(self.tiler_url, collection_id, sample_item)
