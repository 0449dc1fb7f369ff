"""GET /v1/features, /v1/features/{index}, /v1/features/search."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ConceptScores(BaseModel):
    """Why a feature matches a concept (`steering.concepts.search`): specificity and logit effect."""

    score: float = Field(description="specificity x logit_score; candidates are ranked by it.")
    specificity: float = Field(description="(concept_mean - neutral_mean) x concept_fire_rate.")
    concept_mean: float = Field(description="Mean activation / max activation over text about the concept.")
    neutral_mean: float = Field(description="The same over unrelated text.")
    concept_fire_rate: float = Field(description="Share of concept texts on which the feature fires.")
    neutral_fire_rate: float = Field(description="Share of unrelated texts on which the feature fires.")
    word_share: float | None = Field(description="Share of its activation on the concept word's own tokens "
                                     "(near 1: a token feature); null when not measurable.")
    logit_rank: int = Field(description="Best rank of a concept token among the tokens it promotes (0: top).")
    logit_score: float = Field(description="1 - log(1 + logit_rank) / log(vocabulary size).")
    promoted_tokens: list[str] = Field(description="The tokens it promotes most.")
    max_activation: float = Field(description="The activation scale the means are divided by.")


class FeatureSummary(BaseModel):
    object: Literal["feature"] = "feature"
    index: int
    label: str | None = Field(None, description="Automatic label from the catalogue; null without one.")
    label_kind: Literal["concept", "token", "unclear"] | None = Field(
        None, description="concept: words the feature's contexts share; token: the token (or word family) it peaks "
        "on; unclear: neither. Null without a catalogue.")
    max_activation: float | None
    firing_frequency: float | None


class TokenEffect(BaseModel):
    token: str
    token_id: int | None = Field(None, description="Null when the catalogue stores only the token's text.")
    effect: float = Field(description="Decoder direction dotted with the token's unembedding (final norm ignored).")


class Neighbour(BaseModel):
    index: int
    cosine: float


class TopContext(BaseModel):
    text: str = Field(description="The window with the peak token marked as [[token]].")
    token: str = Field(description="The peak token.")
    activation: float = Field(description="The feature's activation at the peak.")


class FeatureDetail(FeatureSummary):
    top_contexts: list[TopContext] = Field(default_factory=list, description="From the catalogue; empty without one.")
    promoted_tokens: list[TokenEffect] = Field(default_factory=list)
    suppressed_tokens: list[TokenEffect] = Field(default_factory=list)
    neighbours: list[Neighbour] = Field(default_factory=list)
    source: Literal["catalogue", "sae"] = Field(
        description="`catalogue` when the SAE ships a catalogue, else `sae` (statistics from its buffers, effects computed live)."
    )


class FeatureList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FeatureSummary]
    offset: int
    limit: int
    total: int
    has_more: bool


class FeatureMatch(BaseModel):
    index: int
    label: str | None
    label_kind: Literal["concept", "token", "unclear"] | None = None
    match: Literal["label", "activation", "concept"]
    activation: float | None = Field(None, description="Largest activation on the query text (activation matches).")
    relative_activation: float | None = Field(None, description="activation / the feature's max activation.")
    token: str | None = Field(None, description="The query token where the activation peaks.")
    score: float | None = Field(None, description="Label matches: the catalogue's label-match score; concept "
                                "matches: specificity x logit_score (as in `concept`).")
    concept: ConceptScores | None = Field(None, description="Concept matches: both scores in full.")


class FeatureSearchResult(BaseModel):
    object: Literal["list"] = "list"
    query: str
    data: list[FeatureMatch]
