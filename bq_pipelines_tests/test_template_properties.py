"""Properties of declaration templates (hypothesis): rendering keeps a lone variable's type and
converts typed templates losslessly, and the file-name overlap check never calls two templates
distinct when some rendering of both is the same name."""

from __future__ import annotations

import itertools
import string
from datetime import date, datetime, timedelta, timezone

from hypothesis import example, given, settings
from hypothesis import strategies as st

from bq_pipelines.datasets.overlap import templates_may_overlap
from bq_pipelines.datasets.templates import TypedTemplate, render_property, template_fields

PROPERTIES = settings(max_examples=100, deadline=None, database=None)
# File-name characters, braces included: a template writes them doubled.
NAME_CHARACTERS = string.ascii_lowercase[:6] + string.digits[:3] + "_.-{}"
VARIABLE_NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
VALUES = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.text(max_size=10),
    st.lists(st.integers(), max_size=3),
)


def escaped(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


@st.composite
def templates_of(draw: st.DrawFn, name: str) -> tuple[str, dict[str, str]]:
    """A template whose rendering with the returned values is `name`: some spans of `name`
    become variables (values of any length, empty included), the rest stays literal text."""
    cuts = sorted(draw(st.sets(st.integers(0, len(name)), max_size=6)) | {0, len(name)})
    template, values = "", dict[str, str]()
    for start, end in itertools.pairwise(cuts):
        if draw(st.booleans()):
            variable = f"v{len(values)}"
            values[variable] = name[start:end]
            template += "{" + variable + "}"
        else:
            template += escaped(name[start:end])
    if draw(st.booleans()):  # a variable rendering empty, anywhere
        variable = f"v{len(values)}"
        values[variable] = ""
        position = draw(st.sampled_from(["start", "end"]))
        template = (
            "{" + variable + "}" + template
            if position == "start"
            else template + ("{" + variable + "}")
        )
    return template, values


@PROPERTIES
@given(name=st.text(NAME_CHARACTERS, max_size=16), data=st.data())
def test_two_templates_that_render_the_same_name_may_overlap(name: str, data: st.DataObject):
    first, first_values = data.draw(templates_of(name))
    second, second_values = data.draw(templates_of(name))
    assert first.format(**first_values) == second.format(**second_values) == name
    assert templates_may_overlap(first, second)
    assert templates_may_overlap(second, first)


@PROPERTIES
@given(
    first=st.text(NAME_CHARACTERS, max_size=12),
    second=st.text(NAME_CHARACTERS, max_size=12),
    data=st.data(),
)
def test_the_overlap_check_is_symmetric_and_exact_for_fixed_names(
    first: str, second: str, data: st.DataObject
):
    template, values = data.draw(templates_of(first))
    other, other_values = data.draw(templates_of(second))
    assert templates_may_overlap(template, other) == templates_may_overlap(other, template)
    if not values and not other_values:  # two fixed names: they overlap when they are equal
        assert templates_may_overlap(template, other) == (first == second)


@PROPERTIES
@given(
    head=st.text(NAME_CHARACTERS, min_size=1, max_size=8),
    other_head=st.text(NAME_CHARACTERS, min_size=1, max_size=8),
    tail=st.text(NAME_CHARACTERS, max_size=8),
)
# Found by this property: an escaped brace split the fixed beginning, only `{` was compared.
@example(head="{0", other_head="{1", tail="")
def test_templates_whose_fixed_beginnings_differ_never_overlap(
    head: str, other_head: str, tail: str
):
    if head.startswith(other_head) or other_head.startswith(head):
        return  # one beginning could continue into the other
    first = escaped(head) + "{a}" + escaped(tail)
    second = escaped(other_head) + "{b}" + escaped(tail)
    assert not templates_may_overlap(first, second)


@PROPERTIES
@given(name=VARIABLE_NAMES, value=VALUES)
def test_a_lone_variable_keeps_its_value_and_type(name: str, value: object):
    rendered = render_property("{" + name + "}", {name: value}, "properties.x")
    assert rendered == value and type(rendered) is type(value)


@PROPERTIES
@given(
    head=st.text(NAME_CHARACTERS, max_size=8),
    tail=st.text(NAME_CHARACTERS, max_size=8),
    name=VARIABLE_NAMES,
    value=st.text(max_size=10),
)
def test_literal_text_around_a_variable_is_kept_as_written(
    head: str, tail: str, name: str, value: str
):
    template = escaped(head) + "{" + name + "}" + escaped(tail)
    assert template_fields(template, "f") == [name]
    if head or tail:
        assert render_property(template, {name: value}, "f") == head + value + tail


@PROPERTIES
@given(number=st.integers())
def test_an_integer_template_gives_the_integer_back(number: int):
    typed = TypedTemplate(template="{n}", type="integer")
    assert render_property(typed, {"n": number}, "f") == number
    assert render_property(typed, {"n": str(number)}, "f") == number


@PROPERTIES
@given(number=st.floats(allow_nan=False, allow_infinity=False))
def test_a_number_template_gives_the_number_back(number: float):
    typed = TypedTemplate(template="{n}", type="number")
    assert render_property(typed, {"n": number}, "f") == number


@PROPERTIES
@given(day=st.dates())
def test_a_date_template_publishes_the_iso_date(day: date):
    typed = TypedTemplate(template="{d}", type="date")
    assert render_property(typed, {"d": day}, "f") == day.isoformat()


@PROPERTIES
@given(
    moment=st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(9999, 12, 30)),
    offset_minutes=st.integers(-14 * 60, 14 * 60),
)
def test_a_datetime_template_publishes_the_same_instant_in_utc(
    moment: datetime, offset_minutes: int
):
    aware = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    typed = TypedTemplate(template="{t}", type="datetime")
    published = render_property(typed, {"t": aware.isoformat()}, "f")
    assert published.endswith("Z")
    assert datetime.fromisoformat(published.replace("Z", "+00:00")) == aware
