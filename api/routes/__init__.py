"""The HTTP routes, one router per resource, over the app's `ServerState`.

    chat       POST /v1/chat/completions
    models     GET /v1/models[/{id}], /health, /ready, /metrics
    presets    GET /v1/presets[/{name}]
    features   GET /v1/features, /v1/features/search, /v1/features/{index}
    inspect    POST /v1/inspect, POST /v1/features/contrast

Each route takes the state through `Depends(server)` once FastAPI has
validated its input, calls `require_ready()` (a 503 while the model loads),
and leaves the work to the library and `api.translate` / `api.render`.
"""

from __future__ import annotations

from fastapi import Request

from api.state import ServerState


def server(request: Request) -> ServerState:
    """The app's state, ready or not."""
    return request.app.state.server
