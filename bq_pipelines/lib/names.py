"""What ids, file names and paths may contain: the one rule set of the project.

Item and collection ids become URL segments of the STAC API and folder names of the static
catalog; file names become object keys; relative paths are joined to a root (the local data
root, a host's base URL). Dataset declarations (at load and at plan time), the ingestion API's
request validation and the static catalog all ask these functions, so a value one of them
accepts is never refused by another after work was done.

Each `*_problem` function returns None for an acceptable value, else the reason, phrased to
follow `<field>: ` in an error message.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

# A leading '_' is allowed: the legacy catalog's Global Forest Watch ids start with one
# (`_gain_00N_000E`). A leading '.' (a hidden folder) or '-' (an option) is not.
ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._\-]*$"
MAX_ID_LENGTH = 200
MAX_FILE_NAME_LENGTH = 255
MAX_PATH_LENGTH = 1024
ID_CHARACTERS = "letters, digits, '.', '_' and '-'"

_ID = re.compile(ID_PATTERN)
_ID_CHARACTER = re.compile(r"[A-Za-z0-9._\-]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


def has_control_characters(value: str) -> bool:
    return _CONTROL.search(value) is not None


def _first_bad_character(value: str) -> str | None:
    return next((c for c in value if not _ID_CHARACTER.fullmatch(c)), None)


def id_problem(value: str) -> str | None:
    """An item or collection id: 1..200 of letters, digits, '.', '_', '-', starting with a
    letter, a digit or '_', without '..' (no '/', '?', '#', '%', spaces or control characters,
    which the STAC API or the static catalog's folders would refuse)."""
    if not value:
        return "must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"longer than {MAX_ID_LENGTH} characters ({len(value)})"
    bad = _first_bad_character(value)
    if bad is not None:
        return f"{bad!r} is not allowed in an id (only {ID_CHARACTERS})"
    if not _ID.match(value):
        return "must start with a letter, a digit or '_'"
    if ".." in value:
        return "must not contain '..'"
    return None


def id_literal_problem(text: str) -> str | None:
    """The fixed text of an id template (between its `{variables}`)."""
    bad = _first_bad_character(text)
    if bad is not None:
        return f"{bad!r} is not allowed in an id (only {ID_CHARACTERS})"
    if ".." in text:
        return "must not contain '..'"
    return None


def file_name_problem(value: str) -> str | None:
    """A plain file name (one segment of a key or a path)."""
    if not value or len(value) > MAX_FILE_NAME_LENGTH:
        return f"must be 1..{MAX_FILE_NAME_LENGTH} characters"
    if "/" in value or "\\" in value or ".." in value or has_control_characters(value):
        return "must be a plain file name (no '/', '\\', '..' or control characters)"
    if value.startswith(".") or value.strip() != value:
        return "must not start with '.' or with/after spaces"
    return None


def relative_path_problem(value: str) -> str | None:
    """A path joined to a root: relative, no '..' segment, no backslash or control character
    (a NUL included), so it can never name anything outside that root."""
    if not value.strip():
        return "must not be empty"
    if len(value) > MAX_PATH_LENGTH:
        return f"longer than {MAX_PATH_LENGTH} characters"
    if has_control_characters(value):
        return "must not contain control characters"
    if "\\" in value:
        return "must not contain a backslash (use '/')"
    if value.startswith(("/", "~")) or _DRIVE.match(value):
        return "must be relative (no leading '/', '~' or drive)"
    if ".." in value.split("/"):
        return "must not contain a '..' segment"
    return None


def url_path_problem(url: str) -> str | None:
    """A URL template's rendering: no credentials (they belong in settings), and a path
    without '..' segments (percent-encoded ones included), backslashes or control
    characters."""
    if has_control_characters(url) or "\\" in url:
        return "must not contain control characters or backslashes"
    try:
        parts = urlsplit(url)
    except ValueError as error:
        return f"not a URL: {error}"
    if "@" in parts.netloc:
        return "must not carry credentials (user:password@): set them in BQ_SOURCE_BASE_URLS"
    if ".." in unquote(parts.path).split("/"):
        return "must not contain a '..' segment"
    return None


def subdataset_problem(value: str) -> str | None:
    """A NetCDF variable or group path (`lccs_class`, `/scenario_1/metric_1/ebv_cube`): a
    leading '/' names the root group, but no '..', quotes, backslashes or control
    characters, which could make GDAL open something else."""
    if not value.strip():
        return "must not be empty"
    if has_control_characters(value) or "\\" in value or '"' in value:
        return "must not contain control characters, backslashes or quotes"
    if ".." in value.split("/"):
        return "must not contain a '..' segment"
    return None
