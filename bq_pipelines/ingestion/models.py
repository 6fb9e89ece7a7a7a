"""The legacy `/newitem` request body and `/status` answer, with field-level validation.

The shapes are the legacy API's (README, "Ingestion API": its endpoints, body and status);
fields after `_param` in a status are additions. Unknown top-level fields of a request are kept
and echoed in `_param`, as the legacy server did.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, time
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from bq_pipelines.lib import names
from bq_pipelines.lib.url_policy import parse_url

MAX_URL_LENGTH = 2048
# What the stores and the catalog can hold: pgstac's jsonb and stac-fastapi's JSON encoder take
# integers of 64 bits at most, finite numbers only, and strings without NUL.
MIN_INT, MAX_INT = -(2**63), 2**63 - 1

# Legacy step names (`_operation`), in the order a request goes through them.
RECEIVED = "RECEIVED"
GETCOLLECTION = "GETCOLLECTION"
GETITEMFILE = "GETITEMFILE"
TRANF_COG = "TRANF_COG"
CREATEPYSTACITEM = "CREATEPYSTACITEM"
UPLOAD_COG_TO_SERVER = "UPLOAD_COG_TO_SERVER"
PROCESS_FINISHED = "PROCESS FINISHED"

# What the store records about where a request is (the `_state` field).
State = Literal["accepted", "running", "finished", "failed"]


def parse_date(text: str) -> datetime:
    """`2018-01-01` (midnight UTC) or an ISO 8601 date-time (naive means UTC)."""
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), tzinfo=UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO date (YYYY-MM-DD) or date-time") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+14:00 is in year 0 in UTC
        raise ValueError(f"{text!r} falls outside years 1-9999 once converted to UTC") from None


def stac_datetime(moment: datetime) -> str:
    """RFC 3339 in UTC (isoformat pads years before 1000, strftime's %Y does not)."""
    return moment.astimezone(UTC).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


def echo_param(body: Mapping[str, Any]) -> dict[str, Any]:
    """A stored request as `_param` echoes it: `properties.datetime` filled in from `date`."""
    properties = {**(body.get("properties") or {})}
    properties["datetime"] = stac_datetime(parse_date(body["date"]))
    return {**body, "properties": properties}


def _value_problem(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int) and not MIN_INT <= value <= MAX_INT:
        return "integer outside the signed 64-bit range the catalog can hold"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a JSON number"
    if isinstance(value, str):
        return _text_problem(value)
    return None


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "NUL characters cannot be stored"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "not valid Unicode (a lone surrogate)"
    return None


def _walk(value: Any, path: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """Every key and value of a JSON document with its path; iterative, so any depth the
    parser accepted is walked without recursion."""
    stack = [(path, value)]
    while stack:
        where, current = stack.pop()
        yield where, current
        if isinstance(current, dict):
            for key, inner in current.items():
                yield (*where, key), key
                stack.append(((*where, key), inner))
        elif isinstance(current, list):
            stack.extend(((*where, i), inner) for i, inner in enumerate(current))


def json_problem(document: Mapping[str, Any]) -> tuple[tuple[str | int, ...], str] | None:
    """The first value of `document` the request store or the catalog could not hold (an
    integer over 64 bits, NaN or infinity, a NUL, a lone surrogate), as (path, reason)."""
    for path, value in _walk(dict(document), ()):
        problem = _value_problem(value)
        if problem is not None:
            return path, problem
    return None


def _accepted(value: str, problem: str | None) -> str:
    if problem is not None:
        raise ValueError(problem)
    return value


class NewItem(BaseModel):
    """POST /newitem: one raster to convert, store and publish as an item of a collection."""

    model_config = ConfigDict(extra="allow", str_max_length=MAX_URL_LENGTH)

    # Ids become object keys, catalog folders and URL segments: the rules of lib/names.py,
    # which dataset declarations and the static catalog follow too.
    collection_id: StrictStr
    date: StrictStr = Field(description="ISO date of the item, e.g. 2018-01-01")
    name: StrictStr = Field(description="the item id")
    filename: StrictStr = Field(description="file name under file_source_host, e.g. x.tif")
    file_source_host: StrictStr = Field(description="URL of the folder holding `filename`")
    stac_api_server: StrictStr | None = Field(
        default=None, description="accepted for compatibility: must be this service's STAC API"
    )
    properties: dict[str, Any] = Field(default_factory=dict)

    @field_validator("collection_id", "name")
    @classmethod
    def _id(cls, value: str) -> str:
        return _accepted(value, names.id_problem(value))

    @field_validator("date")
    @classmethod
    def _iso_date(cls, value: str) -> str:
        parse_date(value)
        return value

    @field_validator("filename")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        return _accepted(value, names.file_name_problem(value))

    @field_validator("file_source_host")
    @classmethod
    def _folder_url(cls, value: str) -> str:
        try:
            parse_url(value)
        except ValueError as error:
            raise ValueError(f"not a usable URL: {error}") from None
        parts = urlsplit(value)
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or a fragment: the file name is appended")
        return value

    @field_validator("properties")
    @classmethod
    def _string_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not key or names.has_control_characters(key):
                raise ValueError(f"property name {key!r} is empty or holds control characters")
        return value

    @property
    def moment(self) -> datetime:
        return parse_date(self.date)

    @property
    def source_url(self) -> str:
        return f"{self.file_source_host.rstrip('/')}/{quote(self.filename)}"

    def stored(self) -> dict[str, Any]:
        """What the store keeps: the fields sent, validated, unknown ones included (a null
        one too: `_param` echoes the request as it came)."""
        return self.model_dump(exclude_unset=True)


class Accepted(BaseModel):
    id: str
    msg: Literal["received"] = "received"


class Retry(BaseModel):
    """An attempt whose run ended without an outcome (it never started, or its worker died)."""

    attempt: int
    run_id: str
    reason: str


class Status(BaseModel):
    """GET /status: the legacy fields, then additions (run, links, times)."""

    model_config = ConfigDict(populate_by_name=True)

    id_: str = Field(alias="_id")
    operation: str = Field(alias="_operation")
    status: Literal["ok", "error"] = Field(alias="_status")
    description: str = Field(alias="_description")
    param: dict[str, Any] = Field(alias="_param")
    state: State = Field(alias="_state")
    step: str | None = Field(default=None, alias="_step")
    run_id: str | None = Field(default=None, alias="_run_id")
    run_url: str | None = Field(default=None, alias="_run_url")
    item_url: str | None = Field(default=None, alias="_item_url")
    attempt: int = Field(
        default=1, alias="_attempt", description="1, then 2, 3 when runs ended without an outcome"
    )
    retries: list[Retry] = Field(
        default_factory=list, alias="_retries", description="each earlier attempt and its end"
    )
    created: datetime = Field(alias="_created")
    updated: datetime = Field(alias="_updated")
