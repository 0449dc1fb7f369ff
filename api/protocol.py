"""Every schema of the HTTP API, in one module.

Request and response models follow the field order of OpenAI's chat
completions reference (https://platform.openai.com/docs/api-reference/chat).
Our extension, `steering`, sits in a marked block at the end of the request;
each of its fields carries a `Field(description=...)` so the OpenAPI page
(/docs) documents it. Bounds are pydantic constraints, so a violation comes
back as a 400 naming the parameter (see `api.errors`).

Deviations from OpenAI are marked `# deviation:` where they happen. Fields of
OpenAI's request that this server does not implement (tools, response_format,
penalties, logit_bias, ...) are ignored, as vLLM and llama.cpp's server do.

This module only describes shapes; `api.translate` turns a request into engine
objects, and nothing below that line sees these models.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Documented bounds (also in api/README_API.md).
MAX_N = 8
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
MAX_STEERING_FEATURES = 64
# |value| of a feature clamp. In `max` units 1000 is a thousand times the
# feature's largest activation seen in the data, far past where text breaks
# down (Anthropic's Golden Gate demo used 10x).
MAX_FEATURE_VALUE = 1000.0
MAX_SEED = 2**63 - 1

# NaN and +-inf are rejected everywhere: Python's json (and so FastAPI) reads
# the non-standard literals NaN and Infinity, and 1e999 becomes inf.
_STRICT = ConfigDict(allow_inf_nan=False, extra="forbid")
_LENIENT = ConfigDict(allow_inf_nan=False, extra="ignore")


# ------------------------------------------------------------------ request
class TextContentPart(BaseModel):
    """One part of a message's content; only text parts are supported."""

    model_config = _LENIENT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = _LENIENT
    # deviation: tool and function messages are not supported; "developer"
    # (OpenAI's newer name for a system message) is read as "system".
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextContentPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = _LENIENT
    include_usage: bool = False


class SteeringFeature(BaseModel):
    """One feature clamp of the `steering` extension."""

    model_config = _STRICT
    index: int = Field(ge=0, description="The SAE feature's index (0 <= index < d_sae; see GET /v1/features).")
    value: float = Field(
        ge=-MAX_FEATURE_VALUE,
        le=MAX_FEATURE_VALUE,
        description=(
            "The clamp value, finite, |value| <= 1000. With unit `max` a multiple of the feature's largest "
            "activation seen in the data (10 is a strong clamp); with unit `raw` an activation; for mode "
            "`scale` a plain factor."
        ),
    )
    mode: Literal["clamp", "add", "scale"] = Field(
        "clamp",
        description="`clamp`: set the feature's activation to value; `add`: add value to it; `scale`: multiply it by value.",
    )
    unit: Literal["max", "raw"] = Field(
        "max", description="Unit of value for `clamp` and `add`: `max` (multiples of the feature's max activation) or `raw`."
    )


class SteeringOptions(BaseModel):
    """The `steering` extension (clients send it in `extra_body`)."""

    model_config = _STRICT
    preset: str | None = Field(None, description="Name of a preset (GET /v1/presets) whose features apply first.")
    features: list[SteeringFeature] = Field(
        default_factory=list,
        max_length=MAX_STEERING_FEATURES,
        description="Feature clamps, merged over the preset's: on the same index the request wins.",
    )
    positions: Literal["all", "generated"] | None = Field(
        None,
        description="Where clamps apply: `all` tokens (prompt and generated) or only `generated` ones. "
        "Default: the preset's, else `all`.",
    )
    compare: bool = Field(
        False,
        description="Also return the unsteered baseline from the same seed: choices 0..n-1 are steered, "
        "n..2n-1 the baselines (choice n+i is the baseline of choice i); every choice carries `steered`.",
    )


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions. Field order follows OpenAI's reference."""

    model_config = _LENIENT
    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    logprobs: bool = False
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1, description="Deprecated by OpenAI in favour of max_completion_tokens.")
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = Field(None, ge=-MAX_SEED - 1, le=MAX_SEED)
    stop: str | list[str] | None = Field(None, description=f"Up to {MAX_STOP} non-empty strings that end the answer.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    top_p: float = Field(1.0, ge=0.0, le=1.0)
    user: str | None = None

    # ---- extension: SAE steering (not part of OpenAI's API) ----------------
    steering: SteeringOptions | None = Field(
        None,
        description="Steer the model by clamping SAE features (extension; send it in the OpenAI client's extra_body).",
    )

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        items = [stop] if isinstance(stop, str) else (stop or [])
        if len(items) > MAX_STOP or any(not s for s in items):
            raise ValueError(f"stop takes at most {MAX_STOP} non-empty strings")
        return stop

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


# ----------------------------------------------------------------- response
class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: Literal["stop", "length"] | None
    # ---- extension: SAE steering ------------------------------------------
    steered: bool = Field(description="True for a steered choice, false for a compare baseline (extension).")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    system_fingerprint: str | None = None
    usage: Usage


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None
    # ---- extension: SAE steering ------------------------------------------
    steered: bool = Field(description="True for a steered choice, false for a compare baseline (extension).")


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    # Present (null until the last chunk) only with stream_options.include_usage.
    usage: Usage | None = None


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


# ----------------------------------------------------------- models, health
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sae-steering"
    # ---- extension: which SAE steers this model -----------------------------
    sae: dict[str, Any] | None = Field(None, description="The loaded SAE (id, d_sae, layer, site, note) (extension).")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ------------------------------------------------------------------ presets
class PresetFeature(BaseModel):
    """A preset's clamp: the same fields as a request's steering feature."""

    model_config = _STRICT
    index: int = Field(ge=0)
    value: float = Field(ge=-MAX_FEATURE_VALUE, le=MAX_FEATURE_VALUE)
    mode: Literal["clamp", "add", "scale"] = "clamp"
    unit: Literal["max", "raw"] = "max"
    # Human notes on the feature, e.g. its catalogue label; not used by the engine.
    label: str | None = None


class Preset(BaseModel):
    """A preset file (presets/NAME.json); see presets/README.md."""

    model_config = _STRICT
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    description: str
    model: str = Field(description="The model id the features belong to (GET /v1/models).")
    sae: str = Field(description="The SAE id the feature indices refer to.")
    features: list[PresetFeature] = Field(min_length=1, max_length=MAX_STEERING_FEATURES)
    positions: Literal["all", "generated"] = "all"
    system_prompt: str | None = None
    concept_words: list[str] = Field(default_factory=list)
    notes: str | None = None


class PresetInfo(Preset):
    object: Literal["preset"] = "preset"
    available: bool = Field(description="False when the preset targets another model or SAE than the loaded ones.")
    unavailable_reason: str | None = None


class PresetList(BaseModel):
    object: Literal["list"] = "list"
    data: list[PresetInfo]


# ----------------------------------------------------------------- features
class FeatureSummary(BaseModel):
    object: Literal["feature"] = "feature"
    index: int
    label: str | None = Field(None, description="Automatic label from the catalogue; null without one.")
    max_activation: float | None
    firing_frequency: float | None


class TokenEffect(BaseModel):
    token: str
    token_id: int | None = Field(None, description="Null when the catalogue stores only the token's text.")
    effect: float = Field(description="Decoder direction dotted with the token's unembedding (final norm ignored).")


class Neighbour(BaseModel):
    index: int
    cosine: float


class FeatureDetail(FeatureSummary):
    top_contexts: list[dict[str, Any]] = Field(default_factory=list, description="From the catalogue; empty without one.")
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
    match: Literal["label", "activation"]
    activation: float | None = Field(None, description="Largest activation on the query text (activation matches).")
    relative_activation: float | None = Field(None, description="activation / the feature's max activation.")
    token: str | None = Field(None, description="The query token where the activation peaks.")
    score: float | None = Field(None, description="The catalogue's label-match score (label matches).")


class FeatureSearchResult(BaseModel):
    object: Literal["list"] = "list"
    query: str
    data: list[FeatureMatch]
