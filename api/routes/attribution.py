"""POST /v1/attribution: the (position, feature) nodes that drove the next token (`steering.attribution`).

The forward and backward run on the shared model with a hook, alone on it
(`ServerState.run_alone`, like /v1/inspect). Bounded: at most
MAX_ATTRIBUTION_TOKENS prompt tokens and MAX_NODES nodes.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.errors import bad_request, not_found
from api.protocol.attribution import AttributionNode, AttributionRequest, AttributionResponse, TargetLogitOut
from api.routes import server
from api.state import ServerState
from api.translate import check_model, message_dicts
from steering.attribution import MAX_ATTRIBUTION_TOKENS, attribute
from steering.chat_template import ChatFormatError
from steering.errors import SteeringError
from steering.inspection import token_rows

router = APIRouter()


@router.post("/v1/attribution", response_model=AttributionResponse,
             summary="Which SAE features drove the next token (activation x gradient, error nodes kept)")
async def attribution(body: AttributionRequest, st: ServerState = Depends(server)) -> AttributionResponse:
    st.require_ready()
    check_model(body.model, st.served)
    if st.sm.sae is None:
        raise not_found("This server runs without an SAE: there are no features to attribute to.", None,
                        "sae_not_loaded")
    if (body.messages is None) == (body.prompt is None):
        raise bad_request("Give exactly one of `messages` and `prompt`.", "messages")
    if body.messages is not None and body.messages[-1].role != "user":
        raise bad_request("The conversation must end with a user message (for a continuation, send `prompt`).",
                          "messages")
    try:
        (ids,) = token_rows(st.sm, [body.prompt if body.prompt is not None else message_dicts(body.messages)])
    except ChatFormatError as e:
        raise bad_request(str(e), e.param) from None
    where = "prompt" if body.prompt is not None else "messages"
    if len(ids) > MAX_ATTRIBUTION_TOKENS:
        raise bad_request(f"The prompt renders to {len(ids)} tokens; at most {MAX_ATTRIBUTION_TOKENS} are attributed.",
                          where, "context_length_exceeded")
    try:
        result = await st.run_alone(lambda: attribute(st.sm, ids, body.target, body.contrast, body.top_k))
    except SteeringError as e:
        raise bad_request(str(e), where if e.param == "messages" else e.param) from None
    return AttributionResponse(
        model=st.served.model_id, target=TargetLogitOut(**result.target.__dict__),
        contrast=TargetLogitOut(**result.contrast.__dict__) if result.contrast else None, metric=result.metric,
        nodes=[AttributionNode(**n.to_dict()) for n in result.nodes], feature_share=result.feature_share,
        error_share=result.error_share, sink_share=result.sink_share, active_features=result.active_features,
        prompt_tokens=result.prompt_tokens)
