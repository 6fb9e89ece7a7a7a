"""FTP sources: SIZE and MDTM to probe, passive binary RETR to fetch."""

from __future__ import annotations

import contextlib
import ftplib
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

from bq_pipelines.lib.redaction import redact_url
from bq_pipelines.lib.sources.common import (
    CHUNK_SIZE,
    FetchedFile,
    SourceFingerprint,
    _check_size,
    _error,
    _iso,
    _StagedFile,
)


@contextlib.contextmanager
def _ftp_session(url: str, timeout: float) -> Iterator[tuple[ftplib.FTP, str]]:
    """A logged-in passive binary FTP session and the decoded remote path."""
    parts = urlsplit(url)
    user = unquote(parts.username) if parts.username else "anonymous"
    password = unquote(parts.password) if parts.password else "anonymous@"
    with _ftp_errors(url), ftplib.FTP(timeout=timeout) as ftp:
        ftp.connect(parts.hostname or "", parts.port or 21)
        ftp.login(user, password)
        ftp.set_pasv(True)
        ftp.voidcmd("TYPE I")  # SIZE answers in bytes only in binary mode
        yield ftp, unquote(parts.path)


@contextlib.contextmanager
def _ftp_errors(url: str) -> Iterator[None]:
    try:
        yield
    except ftplib.error_perm as error:
        message = str(error)
        if message.startswith("550"):
            raise _error(url, f"not found ({message})", not_found=True) from error
        if message.startswith("530"):
            raise _error(url, f"login refused ({message})") from error
        raise _error(url, f"FTP refused: {message}") from error
    except (ftplib.error_temp, ftplib.error_reply, EOFError, OSError) as error:
        # socket.timeout and connection resets are OSErrors: worth another try.
        raise _error(url, f"FTP failed: {type(error).__name__}: {error}", transient=True) from error


def _ftp_fingerprint(url: str, ftp: ftplib.FTP, path: str) -> SourceFingerprint:
    size = ftp.size(path)
    modified: str | None = None
    with contextlib.suppress(ftplib.error_perm):  # MDTM is an extension some servers lack
        stamp = ftp.sendcmd(f"MDTM {path}").split()[-1]
        parsed = datetime.strptime(stamp[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        modified = _iso(parsed)
    return SourceFingerprint(redact_url(url), size, None, modified)


def _ftp_probe(url: str, timeout: float) -> SourceFingerprint:
    with _ftp_session(url, timeout) as (ftp, path):
        return _ftp_fingerprint(url, ftp, path)


def _ftp_fetch(url: str, staged: _StagedFile, timeout: float) -> FetchedFile:
    staged.restart()
    with _ftp_session(url, timeout) as (ftp, path):
        fingerprint = _ftp_fingerprint(url, ftp, path)
        with staged.appender() as write:
            ftp.retrbinary(f"RETR {path}", write, blocksize=CHUNK_SIZE)
    _check_size(url, staged, fingerprint.size)
    return staged.commit(url, fingerprint)
