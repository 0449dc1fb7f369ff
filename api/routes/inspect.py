"""POST /v1/inspect (per-token features of a conversation) and POST /v1/features/contrast.

Both read the shared model up to the SAE's hook site, so they run alone on
it (`ServerState.run_alone`: they wait for running generations, 503
`model_busy` after the wait) on the compute thread. Inputs are bounded: a
conversation of at most MAX_INSPECT_TOKENS tokens; at most MAX_TEXTS texts
a side of at most MAX_CONTRAST_TOKENS tokens each for a contrast.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.errors import bad_request, not_found
from api.features import FeatureService
from api.protocol import (
    ContrastFeatureOut,
    ContrastRequest,
    ContrastResponse,
    FeatureTotalOut,
    InspectRequest,
    InspectResponse,
)
from api.protocol.inspect import MAX_CONTRAST_TOKENS, MAX_INSPECT_TOKENS
from api.render import token_features
from api.routes import server
from api.state import ServerState
from api.translate import check_model, message_dicts
from steering.chat_template import ChatFormatError
from steering.errors import SteeringError
from steering.inspection import ContrastFeature, contrast, inspect_texts, token_rows
from steering.readings import InspectSpec

router = APIRouter()


def _features(st: ServerState) -> FeatureService:
    if st.features is None:
        raise not_found("This server runs without an SAE: there are no features to read.", None, "sae_not_loaded")
    return st.features


def _texts(items: list) -> list:
    return [item if isinstance(item, str) else message_dicts(item) for item in items]


def _check_lengths(st: ServerState, texts: list, limit: int, param: str | None) -> None:
    """Each text renders and fits `limit` tokens; errors name `param[k]` (a contrast side) or the messages."""
    for k, text in enumerate(texts):
        where = f"{param}[{k}]" if param else "messages"
        try:
            (row,) = token_rows(st.sm, [text])
        except ChatFormatError as e:
            raise bad_request(str(e), f"{where}.{e.param}" if param else e.param) from None
        if len(row) > limit:
            raise bad_request(f"The text renders to {len(row)} tokens; at most {limit} are read.", where,
                              "context_length_exceeded")


@router.post("/v1/inspect", response_model=InspectResponse, summary="Per-token SAE features of a conversation")
async def inspect(body: InspectRequest, st: ServerState = Depends(server)) -> InspectResponse:
    st.require_ready()
    check_model(body.model, st.served)
    fs = _features(st)
    spec = InspectSpec(body.inspect.top_k, tuple(body.inspect.features), body.inspect.positions)
    try:
        spec.validate(st.sm.sae)
    except SteeringError as e:
        raise bad_request(str(e), e.param) from None
    messages = message_dicts(body.messages)
    _check_lengths(st, [messages], MAX_INSPECT_TOKENS, None)
    (found,) = await st.run_alone(lambda: inspect_texts(st.sm, [messages], spec, body.summary_limit, body.order))
    summary = [FeatureTotalOut(index=s.index, label=fs.label(s.index), total=s.total, max_activation=s.max.activation,
                               relative_max=s.max.relative, fires=s.fires) for s in found.summary]
    return InspectResponse(model=st.served.model_id, tokens=[token_features(r, st.texts, fs) for r in found.readings],
                           summary=summary)


def _contrast_out(f: ContrastFeature, fs: FeatureService) -> ContrastFeatureOut:
    return ContrastFeatureOut(index=f.index, label=fs.label(f.index), effect=f.effect, mean_a=f.mean_a, mean_b=f.mean_b,
                              fire_rate_a=f.fire_rate_a, fire_rate_b=f.fire_rate_b, query_score=f.query_score)


@router.post("/v1/features/contrast", response_model=ContrastResponse,
             summary="The features that best separate two sets of texts or conversations")
async def contrast_features(body: ContrastRequest, st: ServerState = Depends(server)) -> ContrastResponse:
    st.require_ready()
    check_model(body.model, st.served)
    fs = _features(st)
    a, b = _texts(body.a), _texts(body.b)
    _check_lengths(st, a, MAX_CONTRAST_TOKENS, "a")
    _check_lengths(st, b, MAX_CONTRAST_TOKENS, "b")
    result = await st.run_alone(lambda: contrast(st.sm, a, b, body.limit, body.query))
    return ContrastResponse(a=[_contrast_out(f, fs) for f in result.a], b=[_contrast_out(f, fs) for f in result.b])

