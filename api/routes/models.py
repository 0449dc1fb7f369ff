"""GET /v1/models, /v1/models/{id}: the served model (and its SAE); /health, /ready and /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from api.errors import not_found
from api.protocol import ModelCard, ModelList, Readiness
from api.routes import server
from api.state import ServerState

router = APIRouter()


def _card(st: ServerState) -> ModelCard:
    return ModelCard(id=st.served.model_id, created=st.created, sae=st.sae_info())


@router.get("/health", summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=Response)
async def metrics(st: ServerState = Depends(server)) -> Response:
    body, content_type = st.metrics.render()
    return Response(body, media_type=content_type)


@router.get("/ready", response_model=Readiness, summary="Readiness: model and SAE loaded (503 until then)")
async def readiness(st: ServerState = Depends(server)) -> Readiness:
    st.require_ready()
    return Readiness(model=st.served.model_id, sae=st.sae_info(), presets=len(st.presets))


@router.get("/v1/models", response_model=ModelList)
async def list_models(st: ServerState = Depends(server)) -> ModelList:
    st.require_ready()
    return ModelList(data=[_card(st)])


@router.get("/v1/models/{model:path}", response_model=ModelCard)
async def retrieve_model(model: str, st: ServerState = Depends(server)) -> ModelCard:
    st.require_ready()
    if not st.served.accepts(model):
        raise not_found(f"The model `{model}` does not exist.", "model", "model_not_found")
    return _card(st)
