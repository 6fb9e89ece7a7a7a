"""Properties of URL redaction (hypothesis): the credentials a URL carries never survive
`redact_url`, whatever the scheme, host (a malformed one included), path, query or fragment
around them, and everything but the credentials is kept."""

from __future__ import annotations

import string
from urllib.parse import quote, urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from bq_pipelines.lib.redaction import has_userinfo, redact_url

PROPERTIES = settings(max_examples=100, deadline=None, database=None)
# Hosts and paths in lower case: a secret is marked with upper-case letters, so it cannot
# occur in what surrounds it by chance.
LOWER = string.ascii_lowercase + string.digits
HOSTS = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9.-]{0,12}(:[0-9]{1,5})?", fullmatch=True),
    st.sampled_from(["[::1]", "[fe80::1]:8080", "[::1", "127.0.0.1:9000"]),  # "[::1": malformed
)
TAILS = st.text(LOWER + "/?#&=.-_%", max_size=20)
SECRETS = st.text(min_size=1, max_size=12).map(lambda text: f"PW{text}WP")
# As some clients write them: not percent-encoded, '@' and ':' included (the last '@' of the
# authority ends the userinfo).
RAW_SECRETS = st.text(string.ascii_letters + string.digits + "@:!$&'()*+,;=-._~", max_size=12).map(
    lambda text: f"PW{text}WP"
)


def with_userinfo(scheme: str, user: str, password: str | None, host: str, tail: str) -> str:
    userinfo = quote(user, safe="") + ("" if password is None else ":" + quote(password, safe=""))
    return f"{scheme}://{userinfo}@{host}/{tail}"


def same_url(first: str, second: str) -> bool:
    """Equal, or equal in every part (an empty query or fragment may lose its `?` or `#`)."""
    try:
        return first == second or urlsplit(first) == urlsplit(second)
    except ValueError:  # a malformed host: compared as text
        return False


@PROPERTIES
@given(
    scheme=st.sampled_from(["http", "https", "s3", "ftp", "postgresql"]),
    user=st.text(max_size=8),
    password=SECRETS,
    host=HOSTS,
    tail=TAILS,
)
def test_a_password_never_survives_redaction(scheme, user, password, host, tail):
    url = with_userinfo(scheme, user, password, host, tail)
    redacted = redact_url(url)
    assert quote(password, safe="") not in redacted
    assert "PW" not in redacted  # not even part of it
    assert same_url(redacted, f"{scheme}://{host}/{tail}")
    assert has_userinfo(url) and not has_userinfo(redacted)


@PROPERTIES
@given(scheme=st.sampled_from(["http", "https"]), user=SECRETS, host=HOSTS, tail=TAILS)
def test_a_user_name_alone_is_removed_too(scheme, user, host, tail):
    redacted = redact_url(with_userinfo(scheme, user, None, host, tail))
    assert "PW" not in redacted
    assert same_url(redacted, f"{scheme}://{host}/{tail}")


@PROPERTIES
@given(scheme=st.sampled_from(["http", "https", "s3"]), host=HOSTS, tail=TAILS)
def test_a_url_without_credentials_is_kept_as_it_is(scheme, host, tail):
    url = f"{scheme}://{host}/{tail}"
    assert redact_url(url) == url
    assert redact_url(redact_url(url)) == url


@PROPERTIES
@given(scheme=st.sampled_from(["http", "https"]), password=RAW_SECRETS, host=HOSTS, tail=TAILS)
def test_a_password_written_without_percent_encoding_never_survives(scheme, password, host, tail):
    redacted = redact_url(f"{scheme}://user:{password}@{host}/{tail}")
    assert "PW" not in redacted and "WP" not in redacted
    assert same_url(redacted, f"{scheme}://{host}/{tail}")
