"""The COG settings of a declaration: the dataset's, and what a partition or a variant
overrides."""

from __future__ import annotations

from typing import Any, Literal

from bq_pipelines.datasets.schema.base import Strict
from bq_pipelines.lib.cog import CogSettings


class CogOptions(Strict):
    """The COG settings a declaration may set; see lib/cog/settings.py CogSettings."""

    profile: Literal["raw", "display"] = "raw"
    categorical: bool = False
    assign_crs: str | None = None
    nodata: float | None = None
    # DEFLATE (level 6) unless said otherwise; zstd (level 1) encodes about twice as fast to the
    # same size, for datasets of very many COGs, and needs readers whose GDAL (>= 2.3) or
    # geotiff.js decodes it.
    compression: Literal["deflate", "zstd"] = "deflate"

    def settings(self) -> CogSettings:
        return CogSettings(
            profile=self.profile,
            categorical=self.categorical,
            assign_crs=self.assign_crs,
            nodata=self.nodata,
            compression=self.compression,
        )

    def versioned(self) -> dict[str, Any]:
        """The fields a code version hashes: a declaration that keeps the default compression
        keeps the version it had before the choice existed (its assets do not turn stale)."""
        fields = self.model_dump()
        if self.compression == "deflate":
            del fields["compression"]
        return fields


class CogOverrides(Strict):
    profile: Literal["raw", "display"] | None = None
    categorical: bool | None = None
    assign_crs: str | None = None
    nodata: float | None = None
