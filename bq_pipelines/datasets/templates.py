"""Template values of dataset declarations: item properties rendered from partition variables,
with the JSON type the catalog publishes (the legacy catalog's `version: 2.1` is a number,
`year: 2015` an integer, `year: "2000-2002"` a string).

A property is either a literal (published as written: numbers, strings without `{`, lists,
mappings), a template string (rendered; exactly one `{var}` keeps the variable's own type), or
a typed template `{template: "<template>", type: <type>}` whose rendering is converted.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from bq_pipelines.lib.errors import ConfigError

PropertyType = Literal["string", "integer", "number", "boolean", "date", "datetime"]
TYPED_KEYS = frozenset({"template", "type"})
_BOOLEANS = {"true": True, "false": False}
_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a finite number",
    "boolean": "true or false",
    "date": "a date (YYYY-MM-DD)",
    "datetime": "a date/time (ISO 8601)",
}


class TypedTemplate(BaseModel):
    """`{template: "{time}", type: integer}`: the rendering converted to `type`. A `date` is
    published as `YYYY-MM-DD`, a `datetime` as RFC 3339 in UTC; both accept a date alone
    (`2021-01-01`, as metadata CSVs hold them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str
    type: PropertyType


def as_typed(value: Any) -> Any:
    """A property as declared: mappings of exactly `template` and `type` become TypedTemplate,
    anything else stays as written."""
    if isinstance(value, Mapping) and set(value) == TYPED_KEYS:
        return TypedTemplate.model_validate(dict(value))
    return value


def template_fields(template: str, field: str) -> list[str]:
    """The variable names a template uses (`{a.b}` and `{a[0]}` use `a`)."""
    try:
        return [
            name.split(".")[0].split("[")[0]
            for _, name, _, _ in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as error:
        raise ValueError(f"{field}: bad template {template!r}: {error}") from error


def render(template: str, variables: Mapping[str, Any], field: str) -> str:
    """Fill a template; errors name the field (e.g. a format spec that does not fit)."""
    try:
        return template.format(**variables)
    except (KeyError, ValueError, IndexError, TypeError) as error:
        raise ConfigError(f"{field}: cannot render {template!r}: {error}") from error


def parse_datetime(text: str, field: str) -> datetime:
    """An ISO date/time, or a date alone (midnight); naive means UTC. ConfigError naming the
    field otherwise."""
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as error:
        raise ConfigError(f"{field}: {text!r} is not an ISO date/time: {error}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def render_property(value: Any, variables: Mapping[str, Any], field: str) -> Any:
    """One item property's published value (see the module's docstring)."""
    if isinstance(value, TypedTemplate):
        return convert(render(value.template, variables, field), value.type, field)
    if not isinstance(value, str):
        return value
    parsed = list(string.Formatter().parse(value))
    if len(parsed) == 1 and parsed[0][0] == "" and parsed[0][1] and not parsed[0][2]:
        name = parsed[0][1]
        if name in variables and not parsed[0][3]:
            return variables[name]
    return render(value, variables, field)


def convert(text: str, kind: PropertyType, field: str) -> Any:
    """`text` as a value of `kind`; ConfigError naming the field and the value otherwise."""
    try:
        return _CONVERTERS[kind](text.strip())
    except (ValueError, KeyError):
        raise ConfigError(f"{field}: {text!r} is not {_NAMES[kind]}") from None


def _integer(text: str) -> int:
    return int(text)


def _number(text: str) -> float:
    number = float(text)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(text)  # JSON has no NaN or infinity
    return number


def _date(text: str) -> str:
    return date.fromisoformat(text[:10]).isoformat() if len(text) >= 10 else _invalid(text)


def _datetime(text: str) -> str:
    try:
        moment = parse_datetime(text, "")
    except ConfigError:
        raise ValueError(text) from None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _invalid(text: str) -> str:
    raise ValueError(text)


_CONVERTERS: dict[str, Any] = {
    "string": str,
    "integer": _integer,
    "number": _number,
    "boolean": lambda text: _BOOLEANS[text.lower()],
    "date": _date,
    "datetime": _datetime,
}
