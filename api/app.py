"""The FastAPI application: lifespan, error handlers, and the routers of `api.routes`.

    app = create_app(Settings())                  # loads the model in its lifespan
    app = create_app(settings, steered_model=sm)  # tests: a tiny model, ready at start-up

Loading: with no model given, the lifespan checks the preset files (a broken
file stops start-up), then loads the model and SAE on the compute thread
while the server already answers: GET /health is 200 at once, GET /ready and
the model routes are 503 until loading is done. A failure while loading (or
a preset invalid for the loaded SAE) is logged and passed to `on_fatal`
(`python -m api` stops the server with exit status 1); without `on_fatal`
the server stays up and /ready reports the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator, Callable

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from api.errors import install_error_handlers
from api.gate import ModelGate
from api.guard import RequestGuard
from api.metrics import Metrics, MetricsMiddleware
from api.protocol import MESSAGE_ROLES, ChatCompletionRequest, ContrastRequest, ErrorResponse, InspectRequest
from api.protocol.attribution import AttributionGraphRequest, AttributionRequest
from api.routes import attribution, chat, features, inspect, models, playground, presets
from api.routes.playground import PLAYGROUND_PATH
from api.settings import Settings
from api.state import VERSION, ServerState
from steering.engine import ComputeThread
from steering.presets import PresetError, check_files
from steering.steered_model import SteeredModel

log = logging.getLogger("api")


def _load(settings: Settings) -> SteeredModel:
    return SteeredModel.load(settings.model, settings.sae, device=settings.device, dtype=settings.dtype,
                             device_map=settings.device_map)


def create_app(
    settings: Settings | None = None,
    steered_model: SteeredModel | None = None,
    *,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The app; with `steered_model` (tests, notebooks) nothing is loaded and it is ready at start-up."""
    settings = settings or Settings()
    state = ServerState(settings)
    state.metrics = Metrics(lambda: state.gate.in_flight if state.gate is not None else 0,
                            lambda: state.engine.waiting if state.engine is not None else 0)

    async def load_in_background() -> None:
        try:
            # Loading, fusing weights for the engine and reading the catalogue all block; they run
            # on the compute thread, which then runs the engine (one OpenMP team: steering.engine.compute).
            await state.compute.arun(lambda: state.start(_load(settings)))
        except Exception as exc:  # reported by /ready; fatal under `python -m api`
            state.error = f"{type(exc).__name__}: {exc}"
            log.error("start-up failed: %s", state.error)
            if on_fatal is not None:
                on_fatal(exc)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.server = state
        state.compute = ComputeThread(settings.threads)
        state.gate = ModelGate(state.compute.arun)
        # Fail fast on a malformed preset file, before the slow model load.
        try:
            check_files(settings.presets_dir)
        except PresetError as exc:
            if on_fatal is not None:
                on_fatal(exc)
            raise
        task = None
        if steered_model is not None:
            state.start(steered_model)
        else:
            task = asyncio.get_running_loop().create_task(load_in_background())
        try:
            yield
        finally:
            state.ready = False
            if task is not None and not task.done():
                task.cancel()
            if state.engine is not None:
                await asyncio.to_thread(state.engine.close)
            await asyncio.to_thread(state.compute.close)

    app = FastAPI(
        title="SAE steering server",
        version=VERSION,
        description="OpenAI-compatible chat completions that steer the model by clamping sparse-autoencoder "
        "features (the `steering` extension), with presets, A/B compare and feature look-up.",
        lifespan=lifespan,
        responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 429: {"model": ErrorResponse},
                   503: {"model": ErrorResponse}},
    )
    install_error_handlers(app, [ChatCompletionRequest, InspectRequest, ContrastRequest, AttributionRequest,
                                 AttributionGraphRequest],
                           MESSAGE_ROLES)
    app.add_middleware(RequestGuard, allowed_hosts=settings.allowed_hosts, api_keys=settings.api_keys,
                       max_body_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=lambda: state.metrics)  # counts the guard's refusals
    if settings.cors_origins:  # outermost: a refusal by the guard still carries the CORS headers a page needs
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], expose_headers=["Retry-After"], max_age=600)
    for module in (chat, models, presets, features, inspect, attribution, playground):
        app.include_router(module.router)
    app.mount(PLAYGROUND_PATH, playground.static_files(), name="playground")
    return app
