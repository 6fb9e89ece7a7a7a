"""URLs safe to print, log, raise or store: without the `user:password@` they may carry.

Credentials may ride in a URL's userinfo (a mirror in BQ_SOURCE_BASE_URLS, a STAC API behind
basic auth). Every message, log line and printed URL goes through `redact_url`: one helper, so
no path forgets a case.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# Up to the last "@" of the authority: a password may hold "@" too.
_USERINFO = re.compile(r"(?<=//)[^/?#]*@")


def redact_url(url: object) -> str:
    """`url` (a string, or anything whose str() is a URL, e.g. an httpx.URL) without its
    userinfo."""
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. a malformed IPv6 host: strip anything userinfo-shaped
        return _USERINFO.sub("", text)
    if "@" not in parts.netloc:
        return text
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def has_userinfo(url: str) -> bool:
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:
        return _USERINFO.search(url) is not None
