"""POST /v1/attribution: which SAE features drove the next token (extension; `steering.attribution`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.protocol.common import STRICT, JsonInt
from api.protocol.messages import ChatMessage
from steering.attribution.features import MAX_NODES


class AttributionRequest(BaseModel):
    model_config = STRICT
    model: str
    messages: list[ChatMessage] | None = Field(
        None, min_length=1, description="A conversation ending with a user message; the target is the assistant's "
        "first token. Give this or `prompt`.")
    prompt: str | None = Field(None, min_length=1, description="A plain text (no chat template); the target is its "
                               "next token. Give this or `messages`.")
    target: str | None = Field(None, min_length=1, description="The token whose logit is attributed, as text (its "
                               "first token; mind a leading space); null: the model's own most likely next token.")
    contrast: str | None = Field(None, min_length=1, description="Attribute the target's logit minus this token's.")
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
