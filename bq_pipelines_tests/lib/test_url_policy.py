"""The ingestion API's source policy: allowlist prefixes, internal addresses in every form."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest

from bq_pipelines.lib.errors import SourceRefused
from bq_pipelines.lib.url_policy import SourcePolicy, address_problem, parse_prefix

MIRROR = "http://127.0.0.1:8190/mirror/"
POLICY = SourcePolicy([MIRROR, "https://", "http://", "ftp://ftp.example.org/pub/"])


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("169.254.169.254", "link-local"),  # the cloud metadata address
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.10", "private"),
        ("100.64.0.1", "not a public"),  # shared address space (CGNAT)
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("::", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 of 169.254.169.254
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("fd00:ec2::254", "private"),  # AWS's IPv6 metadata address
    ],
)
def test_internal_addresses_are_named_for_what_they_are(address: str, reason: str):
    problem = address_problem(ipaddress.ip_address(address))
    assert problem is not None and reason in problem, problem


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str):
    assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:8190/other/x.tif",  # the mirror's host, outside its path
        "http://127.0.0.1:8191/mirror/x.tif",  # another port
        "http://localhost:8190/mirror/x.tif",  # a name for the mirror's address
        "http://2130706433/x.tif",  # 127.0.0.1 as one number
        "http://0x7f.1/x.tif",  # 127.0.0.1 in hex shorthand
        "http://[::1]:8190/mirror/x.tif",
        "http://[::ffff:7f00:1]/x.tif",
        "http://10.0.0.5/x.tif",
        "https://192.168.0.1/x.tif",
        "http://0.0.0.0:8190/mirror/x.tif",
        "http://127.0.0.1:8190/mirror/../admin/x.tif",  # climbs out of the prefix
        "http://127.0.0.1:8190/mirror/%2e%2e/admin/x.tif",
        "http://127.0.0.1:8190/mirrored/x.tif",  # a prefix is whole path segments
        "ftp://127.0.0.1/x.tif",
        "ftp://ftp.example.org/private/x.tif",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/x",
        "http://user:pw@example.org/x.tif",
        "http:///x.tif",
    ],
)
def test_refused_urls(url: str):
    with pytest.raises(SourceRefused):
        POLICY.check_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8190/mirror/x.tif",  # named: trusted wherever it resolves
        "http://127.0.0.1:8190/mirror/sub/dir/x.tif",
        "https://93.184.216.34/x.tif",  # any public host through `https://`
        "HTTP://93.184.216.34:8080/data/x.tif",
        "ftp://ftp.example.org/pub/x.tif",  # named: no resolution needed
    ],
)
def test_allowed_urls(url: str):
    POLICY.check_url(url)


def test_connections_are_pinned_to_public_addresses_unless_the_host_is_named():
    assert POLICY.addresses("127.0.0.1", 8190) == ["127.0.0.1"]  # named in MIRROR
    assert POLICY.addresses("93.184.216.34", 443) == ["93.184.216.34"]
    with pytest.raises(SourceRefused, match="loopback"):
        POLICY.addresses("127.0.0.1", 8191)
    with pytest.raises(SourceRefused, match=r"localhost \(127\.0\.0\.1\).*loopback"):
        POLICY.addresses("localhost", 80)


def test_without_entries_nothing_is_allowed():
    with pytest.raises(SourceRefused, match="BQ_API_ALLOWED_SOURCES"):
        SourcePolicy([]).check_url("https://93.184.216.34/x.tif")


def test_a_named_host_may_resolve_anywhere_a_wildcard_one_may_not():
    # A resolver standing in for DNS: the same internal address behind two names.
    def resolver(host: str, port: int) -> list[str]:
        return ["10.0.0.7"]

    policy = SourcePolicy(["https://mirror.internal.example/", "https://"], resolver)
    policy.check_url("https://mirror.internal.example/x.tif")
    with pytest.raises(SourceRefused, match=r"rebound\.example\.org.*10\.0\.0\.7.*private"):
        policy.check_url("https://rebound.example.org/x.tif")


def test_only_a_check_that_may_ask_dns_says_so():
    """An event loop runs those checks in a thread (lib/sources AsyncHttpSession); the others,
    named hosts and URLs refused outright, never resolve, whatever DNS would answer."""
    asked: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["93.184.216.34"]

    policy = SourcePolicy(["https://mirror.internal.example/", "https://"], resolver)
    for url in ("https://mirror.internal.example/x.tif", "http://elsewhere.example/x", "ftp:/x"):
        assert not policy.resolves(url)
        with contextlib.suppress(SourceRefused):
            policy.check_url(url)
    assert asked == []
    assert policy.resolves("https://public.example.org/x.tif")
    policy.check_url("https://public.example.org/x.tif")
    assert asked == ["public.example.org"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("example.org/data", "not a URL prefix"),
        ("gopher://example.org/", "not a URL prefix"),
        ("ftp://", "only http:// and https://"),
        ("https://example.org/?x=1", "no query"),
        ("https://u:p@example.org/", "no query, fragment or credentials"),
        ("https://example.org/a/../b", "'..'"),
    ],
)
def test_bad_prefixes_say_why(text: str, message: str):
    with pytest.raises(ValueError, match=message):
        parse_prefix(text)
