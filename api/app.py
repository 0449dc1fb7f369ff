"""The FastAPI application: lifespan, shared state and routes.

    app = create_app(Settings())                  # loads the model in its lifespan
    app = create_app(settings, steered_model=sm)  # tests: a tiny model, ready at start-up

Loading: with no model given, the lifespan checks the preset files' schema
(a broken file stops start-up), then loads the model and SAE in a background
thread while the server already answers: GET /health is 200 at once, GET
/ready and the model routes are 503 until loading is done. A failure while
loading (or a preset invalid for the loaded SAE) is logged and passed to
`on_fatal` (`python -m api` stops the server with exit status 1); without
`on_fatal` the server stays up and /ready reports the error.

Routes: POST /v1/chat/completions (`api.chat`), GET /v1/models[/{id}],
/v1/presets[/{name}], /v1/features, /v1/features/search (label, activation and
concept matches), /v1/features/{index}, /health, /ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Literal

from fastapi import FastAPI, Path as PathParam, Query, Request
from fastapi.responses import JSONResponse

from api import chat
from api.errors import APIError, bad_request, install_error_handlers, not_found
from api.features import FeatureService, find_catalogue
from api.gate import ModelGate
from api.presets import PresetError, PresetRegistry, check_files
from api.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    ErrorResponse,
    FeatureDetail,
    FeatureList,
    FeatureMatch,
    FeatureSearchResult,
    ModelCard,
    ModelList,
    PresetInfo,
    PresetList,
)
from api.render import TokenTexts
from api.settings import Settings
from api.translate import ServedModel
from steering.concepts.autosteer import MAX_CONCEPT_CHARS
from steering.engine.compute import ComputeThread
from steering.engine.worker import Engine, EngineConfig

log = logging.getLogger("api")
VERSION = "0.1.0"
# How long a search by text or concept (and an uncached auto-steer) waits for running generations before a 503.
EXCLUSIVE_WAIT_S = 60.0


@dataclass
class ServerState:
    """Everything the routes share; filled in once the model is loaded."""

    settings: Settings
    catalogue: Any | None = None
    sm: Any | None = None  # steering.steered_model.SteeredModel
    engine: Engine | None = None
    presets: PresetRegistry = field(default_factory=PresetRegistry)
    served: ServedModel | None = None
    features: FeatureService | None = None
    texts: TokenTexts | None = None
    gate: ModelGate | None = None
    compute: ComputeThread | None = None  # the one thread that runs torch (steering.engine.compute)
    fingerprint: str | None = None
    created: int = 0
    ready: bool = False
    error: str | None = None

    def require_ready(self) -> "ServerState":
        if not self.ready:
            if self.error:
                raise APIError(503, f"The model failed to load: {self.error}", None, "model_load_failed")
            raise APIError(503, "The model is still loading; retry when GET /ready returns 200.", None,
                           "model_not_ready", headers={"Retry-After": "5"})
        return self

    async def run_alone(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on the compute thread with the model to itself (`api.gate`); a 503 `model_busy`
        when running generations hold it past EXCLUSIVE_WAIT_S."""
        try:
            return await self.gate.run_exclusive(fn, *args, timeout=EXCLUSIVE_WAIT_S)
        except TimeoutError:
            raise APIError(503, "The model is busy generating; retry later.", None, "model_busy",
                           headers={"Retry-After": "10"}) from None

    def sae_info(self) -> dict[str, Any] | None:
        sm = self.sm
        if sm is None:
            return None
        info: dict[str, Any] = {"id": sm.sae_id, "note": sm.sae_note, "catalogue": self.catalogue is not None}
        if sm.sae is not None:
            c = sm.sae.cfg
            info.update(d_sae=c.d_sae, architecture=c.architecture, hook_layer=c.hook_layer, hook_site=c.hook_site)
        return info

    def sae_dir(self) -> Path | None:
        from steering.steered_model import shipped_sae_dir

        sae = self.settings.sae
        if sae == "none" or self.sm is None:
            return None
        if sae in (None, "default"):
            return shipped_sae_dir(self.sm.model_id)
        return Path(sae)

    def start(self, sm: Any, catalogue: Any | None = None) -> None:
        """Wire a loaded SteeredModel into the server (validates presets; raises PresetError)."""
        from steering.models import DEFAULT_MODEL

        s = self.settings
        self.sm = sm
        self.presets = PresetRegistry.load(s.presets_dir, sm.model_id, sm.sae_id, sm.sae)
        self.catalogue = catalogue if catalogue is not None else find_catalogue(self.sae_dir())
        aliases = {a for a in (s.model, "default" if sm.model_id == DEFAULT_MODEL else None) if a}
        self.served = ServedModel(
            model_id=sm.model_id,
            aliases=frozenset(aliases),
            context_length=sm.context_length,
            sae=sm.sae,
            render=sm.prompt_ids,
            default_max_tokens=s.default_max_tokens,
        )
        tokenizer = sm.loaded.tokenizer
        self.texts = TokenTexts(tokenizer)
        if sm.sae is not None:
            self.features = FeatureService(sm.loaded.model, tokenizer, sm.sae, self.catalogue, sm=sm)
        self.fingerprint = "fp_" + hashlib.sha1(f"{sm.model_id}|{sm.sae_id}|{VERSION}".encode()).hexdigest()[:10]
        self.engine = Engine(sm.loaded.model, tokenizer, sm.sae, EngineConfig(
            max_queue=s.max_queue, retry_after_s=s.retry_after_s, threads=s.threads, max_batch=s.max_batch),
            compute=self.compute)
        self.created = int(time.time())
        self.ready = True
        log.info("ready: model %s, SAE %s%s", sm.model_id, sm.sae_id, f" ({sm.sae_note})" if sm.sae_note else "")


def _load(settings: Settings) -> Any:
    from steering.steered_model import SteeredModel

    return SteeredModel.load(settings.model, settings.sae, device=settings.device, dtype=settings.dtype)


def create_app(
    settings: Settings | None = None,
    steered_model: Any | None = None,
    *,
    catalogue: Any | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The app; with `steered_model` (tests, notebooks) nothing is loaded and it is ready at start-up."""
    settings = settings or Settings()
    state = ServerState(settings)

    async def load_in_background() -> None:
        try:
            # Loading, fusing weights for the engine and reading the catalogue all block; they run
            # on the compute thread, which then runs the engine (one OpenMP team: steering.engine.compute).
            await state.compute.arun(lambda: state.start(_load(settings), catalogue))
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
            state.start(steered_model, catalogue)
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
    install_error_handlers(app, [ChatCompletionRequest])

    def server(request: Request) -> ServerState:
        return request.app.state.server

    app.post("/v1/chat/completions", response_model=ChatCompletion, response_model_exclude_none=False,
             summary="Create a chat completion (OpenAI-compatible, with the `steering` extension)")(
        chat.create_chat_completion)

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: model and SAE loaded (503 until then)")
    async def ready(request: Request) -> JSONResponse:
        st = server(request).require_ready()
        return JSONResponse({"status": "ready", "model": st.served.model_id, "sae": st.sae_info(),
                             "presets": len(st.presets)})

    def card(st: ServerState) -> ModelCard:
        return ModelCard(id=st.served.model_id, created=st.created, sae=st.sae_info())

    @app.get("/v1/models", response_model=ModelList)
    async def list_models(request: Request) -> ModelList:
        return ModelList(data=[card(server(request).require_ready())])

    @app.get("/v1/models/{model:path}", response_model=ModelCard)
    async def retrieve_model(request: Request, model: str) -> ModelCard:
        st = server(request).require_ready()
        if not st.served.accepts(model):
            raise not_found(f"The model `{model}` does not exist.", "model", "model_not_found")
        return card(st)

    @app.get("/v1/presets", response_model=PresetList)
    async def list_presets(request: Request) -> PresetList:
        st = server(request).require_ready()
        return PresetList(data=[e.info() for e in st.presets.all()])

    @app.get("/v1/presets/{name}", response_model=PresetInfo)
    async def get_preset(request: Request, name: str) -> PresetInfo:
        entry = server(request).require_ready().presets.get(name)
        if entry is None:
            raise not_found(f"Unknown preset {name!r} (GET /v1/presets lists them).", "name", "preset_not_found")
        return entry.info()

    def features(request: Request) -> FeatureService:
        st = server(request).require_ready()
        if st.features is None:
            raise not_found("This server runs without an SAE: there are no features.", None, "sae_not_loaded")
        return st.features

    @app.get("/v1/features", response_model=FeatureList, summary="Page through the SAE's features")
    async def list_features(
        request: Request, offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=500)
    ) -> FeatureList:
        return await asyncio.to_thread(features(request).page, offset, limit)

    @app.get("/v1/features/search", response_model=FeatureSearchResult,
             summary="Features by catalogue label, by activation on the text q, and for q as a concept")
    async def search_features(
        request: Request,
        q: str = Query(min_length=1, max_length=2000),
        limit: int = Query(10, ge=1, le=100),
        mode: Literal["all", "label", "activation", "concept"] = Query(
            "all", description="Which matches: `label` (catalogue labels), `activation` (most active on q), "
            f"`concept` (q as a concept of at most {MAX_CONCEPT_CHARS} characters: specificity x logit effect), "
            "or `all` (each kind up to `limit`, in that order; concept matches only for a short, non-blank q)."),
    ) -> FeatureSearchResult:
        fs = features(request)
        concept_ok = bool(q.strip()) and len(q) <= MAX_CONCEPT_CHARS
        if mode == "concept" and not concept_ok:
            raise bad_request(f"A concept search needs a non-blank q of at most {MAX_CONCEPT_CHARS} characters.", "q")
        want_activation = mode in ("all", "activation")
        want_concept = mode == "concept" or (mode == "all" and concept_ok)
        # Label matches also join the concept search's pool of candidates.
        by_label = await asyncio.to_thread(fs.label_matches, q, limit) if mode != "activation" else []

        def forwards() -> list[FeatureMatch]:
            out = fs.activation_matches(q, limit) if want_activation else []
            if want_concept:
                out += fs.concept_matches(q, limit, extra=[m.index for m in by_label])
            return out

        by_model = await server(request).run_alone(forwards) if want_activation or want_concept else []
        return FeatureSearchResult(query=q, data=(by_label if mode in ("all", "label") else []) + by_model)

    @app.get("/v1/features/{index}", response_model=FeatureDetail, summary="One feature in detail")
    async def get_feature(request: Request, index: int = PathParam(ge=0)) -> FeatureDetail:
        fs = features(request)
        if index >= fs.total:
            raise not_found(f"Feature {index} does not exist: this SAE has {fs.total} features (0..{fs.total - 1}).",
                            "index", "feature_not_found")
        # Without a catalogue entry, detail multiplies by the unembedding: torch work, on the compute thread.
        return await server(request).compute.arun(fs.detail, index)

    return app
