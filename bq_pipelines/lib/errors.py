"""Errors of the core library: each names what failed, where, and what to do about it."""

from __future__ import annotations

from bq_pipelines.lib.redaction import redact_url


class PipelineError(Exception):
    """Base class of every error the core raises on bad input or a failed step."""


class SourceError(PipelineError):
    """A source could not be fetched (404, permission, TLS, size mismatch...). Not retried."""

    def __init__(self, url: str, reason: str, *, not_found: bool = False) -> None:
        self.url = redact_url(url)  # callers pass it redacted already; this is the backstop
        self.reason = reason
        self.not_found = not_found  # the file does not exist (yet): 404/410, FTP 550, NoSuchKey
        super().__init__(f"cannot fetch {self.url}: {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        # Picklable with its fields (a worker process raises it to the parent, lib/pipeline).
        return (type(self), (self.url, self.reason), {"not_found": self.not_found})


class TransientSourceError(SourceError):
    """A fetch failed in a way worth retrying (timeout, connection reset, 5xx, 429)."""


class SourceRefused(SourceError):
    """A fetch was refused by the caller's limits: a URL or address the policy does not allow
    (also on a redirect), a file too large or too slow to arrive, content of the wrong kind."""


class RasterTooLarge(SourceRefused):
    """A raster holds more pixels than the limit (width x height x bands read), found from its
    header before any conversion."""


class CogError(PipelineError):
    """A raster could not be converted to a valid Cloud-Optimized GeoTIFF."""


class StorageError(PipelineError):
    """The object store refused or failed an operation."""


class StacValidationError(PipelineError):
    """A STAC item or collection does not validate against its JSON schemas."""


class CatalogError(PipelineError):
    """Publishing to a catalog (static or STAC API) failed."""


class ConfigError(PipelineError):
    """A setting or a dataset declaration is invalid; the message names the field."""


class BackupError(PipelineError):
    """A backup, its verification or a restore failed or was refused; says what was left."""
