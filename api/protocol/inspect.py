"""POST /v1/inspect and POST /v1/features/contrast: reading the model (extensions; OpenAI has no such endpoint).

The per-token shapes (`TokenFeatures`, `FeatureActivation`) are the same for
an existing text here and for a generation's `steering.inspect`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.protocol.messages import ChatMessage
from api.protocol.common import STRICT, JsonInt
from api.protocol.readings import InspectOptions, TokenFeatures
from steering.inspection.contrast import MAX_TEXTS

MAX_INSPECT_TOKENS = 2048  # per conversation of POST /v1/inspect
MAX_CONTRAST_TOKENS = 512  # per text of POST /v1/features/contrast


class FeatureTotalOut(BaseModel):
    index: int
    label: str | None = None
    total: float = Field(description="Sum of the activation over the read tokens.")
    max_activation: float = Field(description="Largest activation on a read token.")
    relative_max: float | None = None
    fires: int = Field(description="Read tokens on which the feature fires.")


class InspectRequest(BaseModel):
    model_config = STRICT
    model: str
    messages: list[ChatMessage] = Field(min_length=1, description="A conversation; it may end in an assistant message.")
    inspect: InspectOptions = Field(default_factory=InspectOptions)
    summary_limit: JsonInt = Field(20, ge=0, le=200, description="Features in the conversation's summary.")
    order: Literal["total", "max"] = Field("total", description="How the summary ranks features.")


class InspectResponse(BaseModel):
    object: Literal["inspection"] = "inspection"
    model: str
    tokens: list[TokenFeatures]
    summary: list[FeatureTotalOut]


class ContrastRequest(BaseModel):
    model_config = STRICT
    model: str
    a: list[str | list[ChatMessage]] = Field(min_length=1, max_length=MAX_TEXTS,
                                             description="Texts or conversations of the first set.")
    b: list[str | list[ChatMessage]] = Field(min_length=1, max_length=MAX_TEXTS, description="The second set.")
    limit: JsonInt = Field(10, ge=1, le=100, description="Features per side.")
    query: str | None = Field(None, max_length=200, description="Rerank: catalogue matches for this text first.")


class ContrastFeatureOut(BaseModel):
    index: int
    label: str | None = None
    effect: float = Field(description="Cohen's d of the mean relative activation, A over B (variance floored).")
    mean_a: float
    mean_b: float
    fire_rate_a: float
    fire_rate_b: float
    query_score: float | None = Field(None, description="The catalogue's match score for `query`.")


class ContrastResponse(BaseModel):
    object: Literal["contrast"] = "contrast"
    a: list[ContrastFeatureOut] = Field(description="Features that mark set A, largest effect first.")
    b: list[ContrastFeatureOut] = Field(description="Features that mark set B.")
