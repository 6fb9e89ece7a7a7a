"""Properties of the ingestion API's source policy (hypothesis), on a resolver of the test's own:
a host that resolves to an internal address, in any IPv4 or IPv6 form, is refused; a public one
is allowed; a named prefix allows exactly the URLs under it, and nothing escapes it."""

from __future__ import annotations

import ipaddress
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bq_pipelines.lib.errors import SourceRefused
from bq_pipelines.lib.url_policy import SourcePolicy

PROPERTIES = settings(max_examples=100, deadline=None, database=None)
INTERNAL_V4 = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",  # the cloud metadata address among them
    "100.64.0.0/10",
    "0.0.0.0/8",
    "224.0.0.0/4",
    "240.0.0.0/4",
]
INTERNAL_V6 = ["::1/128", "fe80::/10", "fc00::/7", "ff00::/8"]
PUBLIC = ["8.0.0.0/8", "93.184.0.0/16", "2606:4700::/32", "2a00:1450::/32"]
HOSTS = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){1,2}", fullmatch=True)
SEGMENTS = st.lists(st.text(string.ascii_letters + string.digits + "_-.", min_size=1, max_size=8))


def addresses_in(
    networks: list[str],
) -> st.SearchStrategy[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return st.sampled_from(networks).flatmap(lambda network: st.ip_addresses(network=network))


def in_ipv6(address: ipaddress.IPv4Address, form: str) -> str:
    """`address` as IPv6 clients reach it: IPv4-mapped, 6to4, NAT64 or Teredo."""
    value = int(address)
    if form == "mapped":
        return str(ipaddress.IPv6Address(0xFFFF << 32 | value))
    if form == "6to4":
        return str(ipaddress.IPv6Address(0x2002 << 112 | value << 80))
    if form == "nat64":
        return str(ipaddress.IPv6Address(0x64FF9B << 96 | value))
    # Teredo: 2001:0::/32, server, flags, port, then the client's address inverted.
    return str(ipaddress.IPv6Address(0x20010000 << 96 | (~value & 0xFFFFFFFF)))


def wildcard_policy(address: str) -> SourcePolicy:
    return SourcePolicy(["https://", "http://"], resolver=lambda host, port: [address])


@PROPERTIES
@given(
    address=st.one_of(addresses_in(INTERNAL_V4), addresses_in(INTERNAL_V6)),
    host=HOSTS,
    scheme=st.sampled_from(["http", "https"]),
)
def test_a_host_resolving_to_an_internal_address_is_refused(address, host, scheme):
    with pytest.raises(SourceRefused):
        wildcard_policy(str(address)).check_url(f"{scheme}://{host}/data/x.tif")


@PROPERTIES
@given(
    address=addresses_in(INTERNAL_V4[:-2]),  # multicast/reserved have no 6to4 or Teredo use
    form=st.sampled_from(["mapped", "6to4", "nat64", "teredo"]),
    host=HOSTS,
)
def test_an_internal_ipv4_address_inside_ipv6_is_refused(address, form, host):
    with pytest.raises(SourceRefused):
        wildcard_policy(in_ipv6(address, form)).check_url(f"https://{host}/x.tif")


@PROPERTIES
@given(address=addresses_in(PUBLIC), host=HOSTS, segments=SEGMENTS)
def test_a_host_resolving_to_public_addresses_is_allowed_there_only(address, host, segments):
    policy = wildcard_policy(str(address))
    policy.check_url(f"https://{host}/{'/'.join(s for s in segments if s not in ('.', '..'))}")
    assert policy.addresses(host, 443) == [str(address)]


@PROPERTIES
@given(
    scheme=st.from_regex(r"[a-z][a-z0-9+.-]{0,8}", fullmatch=True).filter(
        lambda s: s not in ("http", "https")
    ),
    host=HOSTS,
)
def test_only_http_and_https_are_allowed_for_any_host(scheme, host):
    with pytest.raises(SourceRefused):
        wildcard_policy("8.8.8.8").check_url(f"{scheme}://{host}/x.tif")


@PROPERTIES
@given(user=st.text(string.ascii_letters, min_size=1, max_size=6), host=HOSTS)
def test_credentials_in_a_url_are_refused(user, host):
    with pytest.raises(SourceRefused):
        wildcard_policy("8.8.8.8").check_url(f"https://{user}:secret@{host}/x.tif")


def _never_resolved(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} resolved: a named prefix is trusted as named")


NAMED = SourcePolicy(["http://127.0.0.1:8190/mirror/"], resolver=_never_resolved)


@PROPERTIES
@given(segments=SEGMENTS.map(lambda s: [x for x in s if x not in (".", "..")]))
def test_a_named_prefix_allows_every_path_under_it(segments):
    NAMED.check_url("http://127.0.0.1:8190/mirror/" + "/".join(segments))


@PROPERTIES
@given(
    before=SEGMENTS,
    after=SEGMENTS,
    dots=st.sampled_from(["..", ".", "%2e%2e", "%2E.", ".%2e"]),
)
def test_no_dot_segment_escapes_a_named_prefix(before, after, dots):
    path = "/".join([*before, dots, *after])
    with pytest.raises(SourceRefused):
        NAMED.check_url(f"http://127.0.0.1:8190/mirror/{path}")


@PROPERTIES
@given(
    suffix=st.text(string.ascii_letters + "-_", min_size=1, max_size=6),
    port=st.integers(1, 65535).filter(lambda p: p != 8190),
)
def test_a_neighbour_of_a_named_prefix_is_not_under_it(suffix, port):
    for url in (
        f"http://127.0.0.1:8190/mirror{suffix}/x.tif",  # a folder that only starts alike
        f"http://127.0.0.1:{port}/mirror/x.tif",  # another port of the same host
        "https://127.0.0.1:8190/mirror/x.tif",  # another scheme
    ):
        with pytest.raises(SourceRefused):
            NAMED.check_url(url)
