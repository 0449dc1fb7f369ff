"""POST /v1/attribution and /v1/attribution/graph: which SAE features drove the next token (extensions;
`steering.attribution`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from api.protocol.common import STRICT, JsonInt, bounded_int
from api.protocol.messages import ChatMessage
from steering.attribution.features import MAX_NODES
from steering.attribution.graph import MAX_FEATURE_NODES


class AttributionTarget(BaseModel):
    """What both attribution requests name: the model, the text, and the logit to explain."""

    model_config = STRICT
    model: str
    messages: list[ChatMessage] | None = Field(
        None, min_length=1, description="A conversation ending with a user message; the target is the assistant's "
        "first token. Give this or `prompt`.")
    assistant_prefix: str | None = Field(
        None, min_length=1, description="With `messages`: the start of the assistant's answer; the target is the "
        "token after it (why did the model say ' Madrid' after 'The capital of Spain is'?).")
    prompt: str | None = Field(None, min_length=1, description="A plain text (no chat template); the target is its "
                               "next token. Give this or `messages`.")
    target: str | None = Field(None, min_length=1, description="The token whose logit is attributed, as text (its "
                               "first token; mind a leading space); null: the model's own most likely next token.")
    contrast: str | None = Field(None, min_length=1, description="Attribute the target's logit minus this token's.")


class AttributionRequest(AttributionTarget):
    top_k: JsonInt = Field(20, ge=1, le=MAX_NODES, description="Nodes returned, by |score|.")


class TargetLogitOut(BaseModel):
    token: str
    token_id: int
    logit: float
    probability: float


class AttributionNode(BaseModel):
    position: int
    token: str
    kind: Literal["feature", "error", "sink"] = Field(
        description="`feature`; `error`: the SAE's error at that position; `sink`: position 0 as a whole.")
    feature: int | None
    label: str | None = None
    activation: float = Field(description="The feature's activation; for an error node |error|; for the sink |h_0|.")
    score: float = Field(description="activation x gradient: the estimated drop of the metric if the node were removed.")
    share: float = Field(description="|score| / the sum of |score| over every node.")


class ClampOut(BaseModel):
    index: int
    value: float
    mode: str
    unit: str


class SteeringOut(BaseModel):
    features: list[ClampOut]
    positions: str


class SuggestedClamp(BaseModel):
    feature: int
    label: str | None = None
    positions: list[int] = Field(description="Where the feature fires in the text.")
    estimated_drop: float = Field(description="Its scores summed over the text: about how much the metric falls "
                                  "when it is clamped to 0 at every position (first order).")
    clamp: ClampOut = Field(description="The clamp that does it (with positions `all`).")


class AttributionResponse(BaseModel):
    object: Literal["attribution"] = "attribution"
    model: str
    target: TargetLogitOut
    contrast: TargetLogitOut | None
    metric: float = Field(description="The target's logit, minus the contrast's when given.")
    nodes: list[AttributionNode]
    feature_share: float
    error_share: float
    sink_share: float
    active_features: int
    prompt_tokens: int
    suggested_clamps: list[SuggestedClamp] = Field(
        description="To change the answer: the features of the strongest nodes pushing the metric up, among "
        "features that fire on at most 1% of tokens, each with the clamp (to 0) that removes it.")
    suggested_steering: SteeringOut = Field(
        description="Every suggested clamp at positions `all`: paste it as a chat request's `steering`.")


class AttributionGraphRequest(AttributionTarget):
    max_feature_nodes: bounded_int(1, MAX_FEATURE_NODES) = Field(  # type: ignore[valid-type]
        16, description="Features per layer whose own inputs are computed (one backward each), by influence.")
    node_threshold: float = Field(0.8, gt=0, le=1, description="Keep the nodes of highest influence that together "
                                  "hold this share of it.")
    edge_threshold: float = Field(0.98, gt=0, le=1, description="Keep the edges between kept nodes that hold this "
                                  "share of the influence they carry.")
    format: Literal["steering", "circuit-tracer"] = Field(
        "steering", description="`circuit-tracer`: the graph file circuit-tracer's viewer (and Neuronpedia's) reads.")


class GraphNodeOut(BaseModel):
    id: str = Field(description="`15/1957@27` (layer/feature@position), `15/error@27`, `15/sink`, `token@27`, `logit`.")
    kind: Literal["feature", "error", "sink", "token", "logit"]
    layer: int | None
    position: int
    token: str
    feature: int | None
    label: str | None = None
    activation: float
    influence: float = Field(description="The share of the output's attribution that flows through the node.")


class GraphEdgeOut(BaseModel):
    source: str
    target: str
    weight: float = Field(description="The source's direct effect on the target's pre-activation (or the metric).")
    share: float = Field(description="|weight| / the sum of |weight| over the target's inputs.")


class AttributionGraphResponse(BaseModel):
    object: Literal["attribution.graph"] = "attribution.graph"
    model: str
    target: TargetLogitOut
    contrast: TargetLogitOut | None
    metric: float
    tokens: list[str]
    layers: list[int] = Field(description="The decoder layers of the SAEs, bottom to top.")
    sae_names: list[str]
    nodes: list[GraphNodeOut]
    edges: list[GraphEdgeOut]
    node_threshold: float
    edge_threshold: float
    coverage: dict[str, float] = Field(description="Per layer: the share of its influence in features whose inputs "
                                       "were computed.")
    error_influence: float = Field(description="The share of all influence held by error nodes.")
    exact: bool = Field(description="Every nonlinearity was held: edges are exact direct effects of the linearised "
                        "model.")
    computed_nodes: int
    seconds: float
    suggested_clamps: list[SuggestedClamp] = Field(
        description="As in POST /v1/attribution: the features of the served SAE (the one a chat request clamps) "
        "to clamp to 0 to lower the metric.")
    suggested_steering: SteeringOut


def graph_response(model: str, graph: Any, seconds: float, single: Any) -> AttributionGraphResponse:
    """The response for a `steering.attribution.AttributionGraph`, with the suggestions of `single` (the
    `steering.attribution.Attribution` of the same target at the served SAE's layer)."""
    d = graph.to_dict()
    return AttributionGraphResponse(
        model=model, target=TargetLogitOut(**d["target"]),
        contrast=TargetLogitOut(**d["contrast"]) if d["contrast"] else None, metric=d["metric"], tokens=d["tokens"],
        layers=d["layers"], sae_names=d["sae_names"], nodes=[GraphNodeOut(**n) for n in d["nodes"]],
        edges=[GraphEdgeOut(**e) for e in d["edges"]], node_threshold=d["node_threshold"],
        edge_threshold=d["edge_threshold"], coverage=d["coverage"], error_influence=d["error_influence"],
        exact=d["exact"], computed_nodes=d["computed_nodes"], seconds=seconds,
        suggested_clamps=[SuggestedClamp(**x.to_dict()) for x in single.suggestions],
        suggested_steering=SteeringOut(**single.suggested_steering()))
