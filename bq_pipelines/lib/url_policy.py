"""Where the ingestion API may fetch sources from: an operator allowlist of URL prefixes, and
no internal address unless the operator named it.

Entries of BQ_API_ALLOWED_SOURCES (comma-separated):
- `https://data.example.org/rasters/` (also `http://`, `ftp://`): that host and port, under that
  path. A host named in an entry is trusted wherever it resolves: an internal mirror, or the
  tests' loopback server, is allowed by naming it.
- `https://` or `http://` alone: any host of that scheme whose every address is public, i.e. not
  loopback, private, link-local (169.254.0.0/16, the cloud metadata address), shared (CGNAT),
  multicast, reserved or unspecified, nor an IPv6 form of those (::1, fe80::/10, fc00::/7,
  IPv4-mapped, 6to4, NAT64, Teredo).

The same check applies to every redirect hop, and each connection goes to an address resolved
and checked once (see lib/http_guard.py), so DNS cannot answer differently in between.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from bq_pipelines.lib.errors import SourceRefused

SUPPORTED_SCHEMES = ("http", "https", "ftp")
# Schemes an entry may allow for any public host; others must name their host.
WILDCARD_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21}
SETTING = "BQ_API_ALLOWED_SOURCES"
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    """Every address of `host` (IP literals included, in any form the C library accepts)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise SourceRefused(host, f"cannot resolve host name: {error}") from None
    # An IPv6 scope ("fe80::1%eth0") is not part of the address.
    return list(dict.fromkeys(str(info[4][0]).partition("%")[0] for info in infos))


def address_problem(address: IpAddress) -> str | None:
    """Why `address` is not a public one, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is None and address in NAT64_PREFIX:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            problem = address_problem(embedded)
            return f"{problem} (IPv4 {embedded} inside IPv6)" if problem else None
    checks = (
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address (e.g. the cloud metadata service)"),
        (address.is_unspecified, "the unspecified address"),
        (address.is_multicast, "a multicast address"),
        (address.is_reserved, "a reserved address"),
        (address.is_private, "a private address"),
        (not address.is_global, "not a public address"),
    )
    return next((reason for failed, reason in checks if failed), None)


@dataclass(frozen=True)
class ParsedUrl:
    scheme: str
    host: str
    port: int
    path: str  # percent-decoded, "/" when empty


def _normal_host(host: str) -> str:
    host = host.lower().rstrip(".")
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


def _safe_path(raw: str) -> str:
    path = unquote(raw) or "/"
    if "\\" in path or any(ord(c) < 32 for c in path):
        raise ValueError("the path holds a backslash or a control character")
    if any(segment in (".", "..") for segment in path.split("/")):
        raise ValueError("the path holds '.' or '..' segments")
    return path


def parse_url(url: str) -> ParsedUrl:
    """Scheme, host, port and decoded path of `url`; ValueError saying what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SUPPORTED_SCHEMES:
        allowed = ", ".join(SUPPORTED_SCHEMES)
        raise ValueError(f"scheme {scheme or '(none)'!r} is not one of {allowed}")
    if "@" in parts.netloc:
        raise ValueError("credentials in the URL are not accepted")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port is not a number in 0..65535") from None
    if not parts.hostname:
        raise ValueError("no host")
    return ParsedUrl(
        scheme, _normal_host(parts.hostname), port or DEFAULT_PORTS[scheme], _safe_path(parts.path)
    )


@dataclass(frozen=True)
class SourcePrefix:
    """One allowlist entry; `host` None allows any public host of the scheme."""

    scheme: str
    host: str | None
    port: int | None
    path: str

    def matches(self, url: ParsedUrl) -> bool:
        if url.scheme != self.scheme:
            return False
        if self.host is not None and (url.host, url.port) != (self.host, self.port):
            return False
        stem = self.path.rstrip("/")
        return url.path == stem or url.path.startswith(stem + "/")


def parse_prefix(text: str) -> SourcePrefix:
    """An allowlist entry; ValueError saying what is wrong with it."""
    parts = urlsplit(text.strip())
    scheme = parts.scheme.lower()
    if scheme not in SUPPORTED_SCHEMES or "://" not in text:
        raise ValueError(
            f"{text!r} is not a URL prefix of scheme {'/'.join(SUPPORTED_SCHEMES)} "
            "(e.g. https://data.example.org/rasters/, or https:// for any public host)"
        )
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{text!r}: no query, fragment or credentials in a prefix")
    if not parts.netloc:
        if scheme not in WILDCARD_SCHEMES or parts.path:
            raise ValueError(f"{text!r}: only http:// and https:// may stand alone (any host)")
        return SourcePrefix(scheme, None, None, "/")
    parsed = parse_url(text.strip())
    return SourcePrefix(scheme, parsed.host, parsed.port, parsed.path)


class SourcePolicy:
    """The allowlist, as the `UrlGuard` of lib/sources (check_url, addresses)."""

    def __init__(self, prefixes: Sequence[str], resolver: Resolver = resolve) -> None:
        self.prefixes = [parse_prefix(p) for p in prefixes]
        self._resolve = resolver

    def _named(self, url: ParsedUrl) -> bool:
        return any(p.host is not None and p.matches(url) for p in self.prefixes)

    def _trusted(self, host: str, port: int) -> bool:
        return any((p.host, p.port) == (_normal_host(host), port) for p in self.prefixes)

    def check_url(self, url: str) -> None:
        """Raise SourceRefused unless `url` is under an allowed prefix (and public, when only
        a scheme-wide entry allows it)."""
        try:
            parsed = parse_url(url)
        except ValueError as error:
            raise SourceRefused(url, f"not an allowed source URL: {error}") from None
        if self._named(parsed):
            return
        if self._any_public_host(parsed):
            self._public_addresses(parsed.host, parsed.port)
            return
        raise SourceRefused(url, f"not under any source prefix the operator allows ({SETTING})")

    def _any_public_host(self, url: ParsedUrl) -> bool:
        return any(p.host is None and p.matches(url) for p in self.prefixes)

    def resolves(self, url: str) -> bool:
        """Whether `check_url(url)` asks DNS: only when a scheme-wide entry, not a named host,
        is what may allow it (a caller in an event loop runs that check in a worker thread)."""
        try:
            parsed = parse_url(url)
        except ValueError:
            return False
        return not self._named(parsed) and self._any_public_host(parsed)

    def addresses(self, host: str, port: int) -> list[str]:
        """Where a connection to host:port may go: a named host as it is, any other only to
        its public addresses (resolved here, once)."""
        if self._trusted(host, port):
            return [host]
        return self._public_addresses(host, port)

    def _public_addresses(self, host: str, port: int) -> list[str]:
        addresses = self._resolve(host, port)
        for text in addresses:
            problem = address_problem(ipaddress.ip_address(text))
            if problem:
                shown = host if text == host else f"{host} ({text})"
                raise SourceRefused(shown, f"{problem}: not allowed unless named in {SETTING}")
        if not addresses:
            raise SourceRefused(host, "the host name has no address")
        return addresses
