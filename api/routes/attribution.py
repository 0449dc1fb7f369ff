"""POST /v1/attribution and /v1/attribution/graph: which SAE features drove the next token (`steering.attribution`).

Both run as short calls on the compute thread between decoding steps (the
engine's hooks are only attached inside a step), so generations keep
streaming meanwhile: /v1/attribution is one call (a forward and a
backward), a graph is a call for its forward, one for the output's
backward and one per chunk of backwards (`GraphBuild.step`). Bounded: at most MAX_ATTRIBUTION_TOKENS
prompt tokens, MAX_NODES nodes, MAX_FEATURE_NODES expanded features per
layer, and `state.graphs` graphs being built at once (in total and per
client; then a 429 with a Retry-After).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from api.errors import bad_request, not_found
from api.protocol.attribution import (
    AttributionGraphRequest, AttributionGraphResponse, AttributionNode, AttributionRequest, AttributionResponse,
    AttributionTarget, SuggestedClamp, TargetLogitOut, graph_response,
)
from api.routes import server
from api.searches import client_of
from api.state import ServerState
from api.translate import check_model, message_dicts
from steering.attribution import MAX_ATTRIBUTION_TOKENS, GraphBuild, attribute, graph_layers
from steering.attribution.export import circuit_tracer_graph
from steering.chat_template import ChatFormatError
from steering.errors import SteeringError
from steering.inspection import token_rows

router = APIRouter()


def _prompt(st: ServerState, body: AttributionTarget) -> tuple[list[int], str]:
    """The request's token ids and the name of the field they came from; raises APIError."""
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
    if body.assistant_prefix is not None and body.messages is None:
        raise bad_request("`assistant_prefix` continues a conversation: give `messages` with it.", "assistant_prefix")
    try:
        (ids,) = token_rows(st.sm, [body.prompt if body.prompt is not None else message_dicts(body.messages)])
    except ChatFormatError as e:
        raise bad_request(str(e), e.param) from None
    if body.assistant_prefix is not None:
        ids = ids + st.sm.loaded.tokenizer(body.assistant_prefix, add_special_tokens=False)["input_ids"]
    where = "prompt" if body.prompt is not None else "messages"
    if len(ids) > MAX_ATTRIBUTION_TOKENS:
        raise bad_request(f"The prompt renders to {len(ids)} tokens; at most {MAX_ATTRIBUTION_TOKENS} are attributed.",
                          where, "context_length_exceeded")
    return list(ids), where


@router.post("/v1/attribution", response_model=AttributionResponse,
             summary="Which SAE features drove the next token (activation x gradient, error nodes kept)")
async def attribution(body: AttributionRequest, st: ServerState = Depends(server)) -> AttributionResponse:
    ids, where = _prompt(st, body)
    try:
        result = await st.compute.arun(lambda: attribute(st.sm, ids, body.target, body.contrast, body.top_k))
    except SteeringError as e:
        raise bad_request(str(e), where if e.param == "messages" else e.param) from None
    return AttributionResponse(
        model=st.served.model_id, target=TargetLogitOut(**result.target.__dict__),
        contrast=TargetLogitOut(**result.contrast.__dict__) if result.contrast else None, metric=result.metric,
        nodes=[AttributionNode(**n.to_dict()) for n in result.nodes], feature_share=result.feature_share,
        error_share=result.error_share, sink_share=result.sink_share, active_features=result.active_features,
        prompt_tokens=result.prompt_tokens,
        suggested_clamps=[SuggestedClamp(**s.to_dict()) for s in result.suggestions],
        suggested_steering=result.suggested_steering())


@router.post("/v1/attribution/graph", response_model=AttributionGraphResponse,
             summary="The attribution graph across every SAE layer the server has (features -> features -> output)")
async def attribution_graph(body: AttributionGraphRequest, request: Request,
                            st: ServerState = Depends(server)) -> Any:
    ids, where = _prompt(st, body)
    sm = st.sm
    layers = await st.compute.arun(graph_layers, sm)  # read from disk once, on the thread that owns torch
    try:
        build = GraphBuild(sm.loaded.model, sm.loaded.tokenizer, layers, ids, body.target, body.contrast,
                           body.max_feature_nodes, body.node_threshold, body.edge_threshold)
    except SteeringError as e:
        raise bad_request(str(e), where if e.param == "messages" else e.param) from None
    ticket = st.graphs.admit(client_of(request, bool(st.settings.api_keys)), st.metrics)
    t0 = time.perf_counter()
    try:
        while not build.done:  # a client that goes away cancels this loop between two steps
            await st.compute.arun(build.step)
    finally:
        st.graphs.give(ticket)
    graph = build.result()
    seconds = time.perf_counter() - t0
    if body.format == "circuit-tracer":
        n_layers = int(sm.loaded.model.config.num_hidden_layers)
        return JSONResponse(circuit_tracer_graph(graph, n_layers, slug="steering-graph", scan=sm.model_id,
                                                 prompt=sm.loaded.tokenizer.decode(ids)))
    # What to clamp: the served SAE's features (the ones a chat request can clamp), for the graph's own target.
    target = sm.loaded.tokenizer.decode([graph.target.token_id])
    single = await st.compute.arun(lambda: attribute(sm, ids, target, body.contrast, 1))
    return graph_response(st.served.model_id, graph, seconds, single)
