"""What the routes share: one `ServerState` per app, filled in once the model is loaded.

    state.require_ready()        the state, or a 503 while loading (or after a failed load)
    await state.run_alone(fn)    fn on the compute thread with the model to itself (`api.gate`)

Everything here is built once in `start` from a loaded `SteeredModel`: the
engine (on the shared compute thread), the presets checked against its SAE,
the feature service over its catalogue, its auto-steerer (which remembers
concepts), and the model's description for translation. Routes only read it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from api.errors import APIError, shutting_down
from api.features import FeatureService
from api.gate import ModelGate
from api.metrics import Metrics
from api.protocol import SAEInfo
from api.searches import SearchSlots
from api.settings import Settings
from api.translate import ServedModel
from steering.concepts import AutoSteerer
from steering.engine import ComputeThread, Engine, EngineConfig, EngineShutdown
from steering.models import DEFAULT_MODEL
from steering.presets import PresetRegistry
from steering.steered_model import SteeredModel
from steering.tokens import TokenTexts

log = logging.getLogger("api")
VERSION = "0.1.0"
# How long a search by text or concept, an inspection or a contrast waits for running generations before a 503.
EXCLUSIVE_WAIT_S = 60.0


@dataclass
class ServerState:
    """Everything the routes share; filled in by `start` once the model is loaded."""

    settings: Settings
    compute: ComputeThread | None = None  # the one thread that runs torch (steering.engine.compute)
    gate: ModelGate | None = None
    sm: SteeredModel | None = None
    engine: Engine | None = None
    presets: PresetRegistry = field(default_factory=PresetRegistry)
    served: ServedModel | None = None
    features: FeatureService | None = None
    autosteer: AutoSteerer | None = None
    texts: TokenTexts | None = None
    fingerprint: str | None = None
    created: int = 0
    ready: bool = False
    error: str | None = None
    draining: bool = False  # SIGTERM came: new requests get a 503, running ones may finish
    searches: SearchSlots = field(default_factory=SearchSlots)  # uncached concept searches running (api.searches)
    graphs: SearchSlots = field(default_factory=lambda: SearchSlots(  # attribution graphs being built
        total=2, per_client=1, what="attribution graph", plural="attribution graphs", reason="attribution_graphs",
        mean_s=5.0))
    metrics: Metrics | None = None

    def require_ready(self) -> "ServerState":
        if self.draining:
            if self.metrics is not None:
                self.metrics.rejections.labels(reason="shutting_down").inc()
            raise shutting_down()
        if not self.ready:
            if self.error:
                raise APIError(503, f"The model failed to load: {self.error}", None, "model_load_failed")
            raise APIError(503, "The model is still loading; retry when GET /ready returns 200.", None,
                           "model_not_ready", headers={"Retry-After": "5"})
        return self

    async def run_alone(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on the compute thread with the model to itself (`api.gate`); a 503 `model_busy`
        when running generations hold it past EXCLUSIVE_WAIT_S."""
        assert self.gate is not None
        try:
            return await self.gate.run_exclusive(fn, *args, timeout=EXCLUSIVE_WAIT_S)
        except TimeoutError:
            if self.metrics is not None:
                self.metrics.rejections.labels(reason="model_busy").inc()
            log.warning("model busy: an exclusive job waited %.0f s", EXCLUSIVE_WAIT_S)
            raise APIError(503, "The model is busy generating; retry later.", None, "model_busy",
                           headers={"Retry-After": "10"}) from None

    async def drain(self, timeout: float, flush_s: float = 5.0) -> bool:
        """Graceful shutdown: refuse new requests (503), let the answers in flight finish for up to
        `timeout` s, then end the rest with an error event (`EngineShutdown`) and give their streams
        `flush_s` s to send it and `[DONE]`. True when everything finished on its own."""
        self.draining = True
        gate = self.gate
        if gate is None or self.engine is None:
            return True
        log.info("draining: %d request(s) in flight, up to %.0f s", gate.in_flight, timeout)
        if await gate.wait_idle(timeout):
            log.info("drained")
            return True
        log.warning("drain timeout: ending %d request(s) with an error event", gate.in_flight)
        engine = self.engine
        await asyncio.to_thread(engine.close, EngineShutdown())
        await gate.wait_idle(flush_s)
        return False

    def sae_info(self) -> SAEInfo | None:
        sm = self.sm
        if sm is None:
            return None
        info = SAEInfo(id=sm.sae_id, note=sm.sae_note, catalogue=sm.catalogue is not None)
        if sm.sae is not None:
            c = sm.sae.cfg
            info = info.model_copy(update=dict(d_sae=c.d_sae, architecture=c.architecture, hook_layer=c.hook_layer,
                                               hook_site=c.hook_site, max_unit=sm.max_unit_source))
        return info

    def start(self, sm: SteeredModel) -> None:
        """Wire a loaded SteeredModel into the server (checks presets; raises PresetError)."""
        s = self.settings
        self.sm = sm
        self.presets = PresetRegistry.load(s.presets_dir, sm.model_id, sm.sae_id, sm.sae)
        tokenizer = sm.loaded.tokenizer
        self.engine = Engine(sm.loaded.model, tokenizer, sm.sae, EngineConfig(
            max_queue=s.max_queue, retry_after_s=s.retry_after_s, threads=s.threads, max_batch=s.max_batch,
            max_kv_bytes=None if s.max_kv_mib is None else s.max_kv_mib * 2**20), compute=self.compute)
        aliases = {a for a in (s.model, "default" if sm.model_id == DEFAULT_MODEL else None) if a}
        self.served = ServedModel(
            model_id=sm.model_id,
            aliases=frozenset(aliases),
            context_length=min(sm.context_length, self.engine.max_length),  # --max-kv-mib may shorten it
            sae=sm.sae,
            render=sm.prompt_ids,
            default_max_tokens=s.default_max_tokens,
        )
        self.texts = TokenTexts(tokenizer)
        if sm.sae is not None:
            self.features = FeatureService(sm)
            self.autosteer = AutoSteerer(sm)
            self.autosteer.prepare()  # the unrelated texts' statistics, once: a new concept then runs only its own
        self.fingerprint = "fp_" + hashlib.sha1(f"{sm.model_id}|{sm.sae_id}|{VERSION}".encode()).hexdigest()[:10]
        self.created = int(time.time())
        self.ready = True
        log.info("ready: model %s, SAE %s%s", sm.model_id, sm.sae_id, f" ({sm.sae_note})" if sm.sae_note else "")
