"""The baseline of bench_api.py: a plain FastAPI endpoint that takes the same JSON body as
POST /newitem and answers `{"id", "msg"}`, with no token, validation, probe or store. Served by
uvicorn with the API's own settings (one process, log level info), so the ratio printed by the
benchmark is the API's cost over the framework's floor on the same machine at the same moment."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import Body, FastAPI

app = FastAPI()


@app.post("/newitem")
def new_item(body: dict[str, Any] = Body(...)) -> dict[str, str]:  # noqa: B008 (FastAPI's idiom)
    return {"id": str(uuid.uuid4()), "msg": "received"}
