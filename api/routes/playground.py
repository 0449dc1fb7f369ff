"""GET /: the steering playground, a static page (api/playground/) that calls this server's API.

Plain HTML, CSS and JavaScript modules, no build step and nothing fetched from
elsewhere, so it works offline. The page and its files are open even when API
keys are set (they hold no data); the page asks for a key and sends it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

PLAYGROUND_DIR = Path(__file__).resolve().parent.parent / "playground"
PLAYGROUND_PATH = "/playground"

router = APIRouter()


@router.get("/", include_in_schema=False)
async def playground() -> FileResponse:
    return FileResponse(PLAYGROUND_DIR / "index.html", media_type="text/html")


def static_files() -> StaticFiles:
    return StaticFiles(directory=PLAYGROUND_DIR)
