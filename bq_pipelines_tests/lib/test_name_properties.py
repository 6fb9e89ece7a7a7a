"""Properties of the id, file-name and path rules (hypothesis): an accepted id is safe as a URL
segment, a file name and a folder; anything else is refused naming the character; an accepted
relative path never leaves the root it is joined to."""

from __future__ import annotations

import posixpath
import re
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from bq_pipelines.lib.names import (
    MAX_ID_LENGTH,
    file_name_problem,
    id_problem,
    relative_path_problem,
)

PROPERTIES = settings(max_examples=100, deadline=None, database=None)
ID_CHARACTER = re.compile(r"[A-Za-z0-9._\-]")
ROOT = "/data/root"


@PROPERTIES
@given(
    value=st.text(max_size=40) | st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,30}", fullmatch=True)
)
def test_an_accepted_id_is_a_plain_url_segment_file_name_and_folder(value: str):
    if id_problem(value) is not None:
        return
    assert 1 <= len(value) <= MAX_ID_LENGTH
    assert quote(value, safe="") == value  # no percent-encoding in the STAC API's URLs
    assert value not in (".", "..") and ".." not in value and not value.startswith(("-", "."))
    assert file_name_problem(value) is None
    assert relative_path_problem(value) is None
    assert posixpath.dirname(posixpath.normpath(posixpath.join(ROOT, value))) == ROOT


@PROPERTIES
@given(
    head=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,10}", fullmatch=True),
    bad=st.characters().filter(lambda c: not ID_CHARACTER.fullmatch(c)),
    tail=st.from_regex(r"[A-Za-z0-9_-]{0,10}", fullmatch=True),
)
def test_an_id_with_any_other_character_is_refused_naming_it(head: str, bad: str, tail: str):
    problem = id_problem(head + bad + tail)
    assert problem is not None and repr(bad) in problem


@PROPERTIES
@given(
    value=st.lists(
        st.text(max_size=6) | st.sampled_from(["..", ".", "", "~", "/", "a/../..", "%2e%2e"]),
        max_size=6,
    ).map("/".join)
)
def test_an_accepted_relative_path_stays_under_its_root(value: str):
    if relative_path_problem(value) is not None:
        return
    joined = posixpath.normpath(posixpath.join(ROOT, value))
    assert joined == ROOT or joined.startswith(ROOT + "/")
