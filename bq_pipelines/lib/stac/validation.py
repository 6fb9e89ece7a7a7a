"""Offline validation of STAC objects against the core schema and every extension they declare.

The schemas ship in the package (`bq_pipelines/lib/stac_schemas/`, see its README); a folder given
by the caller (BQ_STAC_SCHEMAS_DIR) adds to them. Compiled with jsonschema-rs.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema_rs
import pystac
from pystac.validation.local_validator import get_local_schema_cache
from pystac.validation.schema_uri_map import DefaultSchemaUriMap

from bq_pipelines.lib.errors import StacValidationError

logger = logging.getLogger(__name__)

# Schemas shipped inside the package, in `bq_pipelines.lib` (package data, see the folder's
# README), laid out like the override folder: `<name>/<version>/schema.json`, and PROJ's
# `proj/<version>/projjson.schema.json`.
SHIPPED_SCHEMAS_PACKAGE = "bq_pipelines.lib"
SHIPPED_SCHEMAS = "stac_schemas"
_PROJJSON_FILE = "projjson.schema.json"
_PROJJSON_SHIPPED_VERSION = "v0.7"
_MAX_MESSAGE_CHARS = 300


@dataclass(frozen=True)
class _SchemaSet:
    """Every schema validation may use, by URL, and the compiled-reference registry over them."""

    schemas: Mapping[str, dict[str, Any]]
    registry: jsonschema_rs.Registry
    origin: str  # where they come from, for error messages


def _schema_url(relative: PurePosixPath) -> str | None:
    """The published URL of a schema file, from its path in a schemas folder."""
    parts = relative.parts
    if len(parts) != 3:
        return None
    name, version, file_name = parts
    if name == "proj" and file_name == _PROJJSON_FILE:
        return f"https://proj.org/schemas/{version}/{_PROJJSON_FILE}"
    if file_name == "schema.json":
        return f"https://stac-extensions.github.io/{name}/{version}/schema.json"
    return None


def _folder_schemas(folder: Traversable) -> dict[str, dict[str, Any]]:
    """Every schema file of a folder laid out `<name>/<version>/<file>`, by published URL."""
    schemas: dict[str, dict[str, Any]] = {}
    for name in folder.iterdir():
        if not name.is_dir():
            continue
        for version in name.iterdir():
            if not version.is_dir():
                continue
            for file in version.iterdir():
                url = _schema_url(PurePosixPath(name.name, version.name, file.name))
                if url is None or not file.is_file():
                    continue
                try:
                    schemas[url] = json.loads(file.read_text(encoding="utf-8"))
                except ValueError as error:
                    raise StacValidationError(f"STAC schema {file} is not JSON: {error}") from error
    return schemas


def _projjson_aliases(schemas: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    # The projection extension's versions cite PROJJSON v0.2 to v0.7; PROJ publishes only its
    # newest schema, a superset of the older ones for what GDAL writes.
    newest = schemas[f"https://proj.org/schemas/{_PROJJSON_SHIPPED_VERSION}/{_PROJJSON_FILE}"]
    return {
        f"https://proj.org/schemas/v0.{minor}/{_PROJJSON_FILE}": newest for minor in range(2, 7)
    }


def _offline_only(uri: str) -> Any:
    raise LookupError(f"{uri} is not among the offline STAC schemas")


@functools.cache
def _schema_set(override: Path | None) -> _SchemaSet:
    """Core schemas (pystac's), the shipped ones, then the override folder's on top."""
    shipped = _folder_schemas(importlib.resources.files(SHIPPED_SCHEMAS_PACKAGE) / SHIPPED_SCHEMAS)
    schemas = {**get_local_schema_cache(), **_projjson_aliases(shipped), **shipped}
    origin = "the schemas shipped in bq_pipelines/lib/stac_schemas"
    if override is not None:
        schemas.update(_folder_schemas(override))
        origin += f" and {override}"
    try:
        registry = jsonschema_rs.Registry(list(schemas.items()), retriever=_offline_only)
    except ValueError as error:
        raise StacValidationError(f"STAC schemas ({origin}): {error}") from error
    return _SchemaSet(schemas, registry, origin)


@functools.cache
def _validator(uri: str, override: Path | None) -> jsonschema_rs.Validator:
    # Compiled once per schema: compilation costs far more than a validation.
    schema_set = _schema_set(override)
    schema = schema_set.schemas.get(uri)
    if schema is None:
        raise StacValidationError(
            f"schema {uri} is not available offline (looked in {schema_set.origin}); put it in "
            "BQ_STAC_SCHEMAS_DIR as <name>/<version>/schema.json, or drop the extension"
        )
    try:
        return jsonschema_rs.validator_for(
            schema, registry=schema_set.registry, validate_formats=True, offline=True
        )
    except ValueError as error:
        raise StacValidationError(f"schema {uri} cannot be compiled offline: {error}") from error


def _core_schema_uri(stac_dict: Mapping[str, Any]) -> str:
    object_type = pystac.serialization.identify_stac_object_type(dict(stac_dict))
    if object_type is None:
        raise StacValidationError(f"{stac_dict.get('id')!r} is not a STAC item/collection/catalog")
    version = str(stac_dict.get("stac_version", pystac.get_stac_version()))
    uri = DefaultSchemaUriMap().get_object_schema_uri(object_type, version)
    if uri is None:
        raise StacValidationError(f"no core schema for STAC {version} {object_type}")
    return uri


def _most_specific(error: jsonschema_rs.ValidationError) -> jsonschema_rs.ValidationError:
    """The deepest error under anyOf/oneOf branches.

    Extension schemas are `oneOf` an item shape and a collection shape: the error worth reading
    is the failing field inside the branch that matched the object's type, which is the one
    deepest in the instance.
    """
    branches = getattr(error.kind, "context", None) or []
    candidates = [_most_specific(inner) for branch in branches for inner in branch]
    if not candidates:
        return error
    return max(candidates, key=lambda inner: len(inner.instance_path))


def _field_path(error: jsonschema_rs.ValidationError) -> str:
    return "/" + "/".join(str(part) for part in error.instance_path)


def _check_against(stac_dict: Mapping[str, Any], uri: str, override: Path | None) -> None:
    try:
        validator = _validator(uri, override)
    except StacValidationError as error:
        raise StacValidationError(
            f"{stac_dict.get('type')} {stac_dict.get('id')!r}: {error}"
        ) from error
    # `is_valid` stops at the first failure and builds no error: the readable error is worked
    # out only for an object that fails. Tuples are read as arrays, as a JSON writer writes them.
    try:
        if validator.is_valid(stac_dict):
            return
        first = next(validator.iter_errors(stac_dict), None)
    except ValueError as error:  # e.g. a datetime object where the schema expects a string
        raise StacValidationError(
            f"{stac_dict.get('type')} {stac_dict.get('id')!r} holds a value with no JSON form: "
            f"{error}"
        ) from error
    if first is None:
        return
    specific = _most_specific(first)
    message = specific.message
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[:_MAX_MESSAGE_CHARS] + "..."
    raise StacValidationError(
        f"{stac_dict.get('type')} {stac_dict.get('id')!r} fails schema {uri} at "
        f"{_field_path(specific)}: {message}"
    )


def validate(
    stac_object: pystac.STACObject | Mapping[str, Any], schemas_dir: Path | None = None
) -> None:
    """Validate against the core schema and every extension schema the object declares, offline.

    Raises StacValidationError naming the object id, the schema, the failing field and the
    reason. `schemas_dir` (BQ_STAC_SCHEMAS_DIR) adds schemas to the shipped ones, or replaces
    them; it is read once per process. A schema found nowhere is an error, never a download.
    """
    if isinstance(stac_object, pystac.STACObject):
        stac_dict: Mapping[str, Any] = stac_object.to_dict(
            include_self_link=False, transform_hrefs=False
        )
    else:
        stac_dict = stac_object
    if schemas_dir is not None and not schemas_dir.is_dir():
        raise StacValidationError(f"STAC schemas folder {schemas_dir} does not exist")
    override = schemas_dir.resolve() if schemas_dir is not None else None
    for uri in [_core_schema_uri(stac_dict), *stac_dict.get("stac_extensions", [])]:
        _check_against(stac_dict, uri, override)
    logger.debug("%s %r is valid", stac_dict.get("type"), stac_dict.get("id"))
