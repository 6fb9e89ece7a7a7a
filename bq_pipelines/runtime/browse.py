"""`make browse`: the embedded defaults' static catalog and local objects over http on loopback,
so the links the pipeline records (`item_url`, thumbnails, COGs, coverage maps) open from the
Dagster UI, which a browser will not do for `file://` links.

Serves two folders and nothing else: `/catalog/` is BQ_CATALOG_DIR, `/objects/` BQ_OBJECTS_DIR
(never BQ_HOME itself: it holds the API's token and Dagster's storage). Runs record http links
when BQ_BROWSE_URL is this server's URL (`make browse` prints the line to export).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Mapping
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.settings import Settings

HOST = "127.0.0.1"
PORT_ENV = "BQ_BROWSE_PORT"
DEFAULT_PORT = 8385


class BrowseHandler(SimpleHTTPRequestHandler):
    """GET/HEAD of files (and folder listings) under the served folders only."""

    def __init__(self, *args: object, roots: Mapping[str, Path], **kwargs: object) -> None:
        self.roots = roots
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def translate_path(self, path: str) -> str:
        name, _, rest = urlparse(path).path.lstrip("/").partition("/")
        root = self.roots.get(name)
        if root is None:
            return str(Path(os.devnull) / "not-served")  # answered 404
        # The standard resolution (drops `..` and empty segments), inside that folder.
        self.directory = str(root)
        return super().translate_path("/" + rest)

    def end_headers(self) -> None:
        # STAC clients in other pages (a STAC Browser) may read the catalog too.
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()


def browse_roots(settings: Settings) -> dict[str, Path]:
    """URL folder name -> folder served: the static catalog, the local object store."""
    return {
        "catalog": settings.catalog_dir.absolute(),
        "objects": settings.objects_dir.absolute(),
    }


def make_server(roots: Mapping[str, Path], host: str, port: int) -> ThreadingHTTPServer:
    handler = functools.partial(BrowseHandler, roots=dict(roots))
    return ThreadingHTTPServer((host, port), handler)


def port_from_env(env: Mapping[str, str]) -> int:
    raw = env.get(PORT_ENV) or str(DEFAULT_PORT)
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"{PORT_ENV}: {raw!r} is not a port number (1..65535)")
    return int(raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
        port = port_from_env(os.environ)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    server = make_server(browse_roots(settings), HOST, port)
    url = f"http://{HOST}:{server.server_port}"
    print(
        f"serving {settings.catalog_dir} at {url}/catalog/ and {settings.objects_dir} at "
        f"{url}/objects/; for runs to link there: export BQ_BROWSE_URL={url}",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
