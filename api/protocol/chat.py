"""POST /v1/chat/completions: the request, the response, the stream's chunks.

Request and response models follow the field order of OpenAI's chat
completions reference (https://platform.openai.com/docs/api-reference/chat).
Our extension, `steering`, sits in a marked block at the end of the request
(feature clamps, a preset, auto-steer's `concept` and `strength`), and in
marked blocks of the responses (`steered` on each choice; `steering`, the
steering used, on a chat.completion and on a stream's first chunk); each of
its fields carries a `Field(description=...)` so the OpenAPI page (/docs)
documents it. Bounds are pydantic constraints, so a violation comes back as
a 400 naming the parameter (see `api.errors`).

Deviations from OpenAI are marked `# deviation:` where they happen. Every
sampling field is honoured: OpenAI's (`frequency_penalty`,
`presence_penalty`, `logit_bias`) and vLLM's extras (`top_k`, `min_p`,
`repetition_penalty`, `min_tokens`, `ignore_eos`). OpenAI fields that this
server does not implement (`tools`, `response_format`, ...) are accepted at
their defaults and a 400 naming the field otherwise; an unknown field is a
400 too, so nothing a client sends is silently dropped. Numbers, booleans
and indices are strict: `true` is not 1, `"7"` is not 7.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, Field, StringConstraints, ValidationError, WrapValidator, field_validator

from api.protocol.common import (
    LENIENT,
    MAX_CONCEPT_CHARS,
    MAX_FEATURE_VALUE,
    MAX_N,
    MAX_STEERING_FEATURES,
    MAX_STOP,
    MAX_STRENGTH,
    MAX_TOP_LOGPROBS,
    DEFAULT_METHOD,
    DIRECTION_FEATURES,
    AutoSteerMethod,
    MODES_DOC,
    POSITIONS_DOC,
    STRICT,
    UNITS_DOC,
    ClampMode,
    ClampUnit,
    GeneratedLimit,
    JsonInt,
    bounded_int,
    Positions,
)
from api.protocol.features import FeatureMatch
from api.protocol.messages import ChatMessage
from api.protocol.readings import InspectOptions, MonitorEventOut, MonitorOptions, TokenFeatures
from steering.engine import MAX_LOGIT_BIAS
from steering.monitors import MAX_MONITORS

NOT_IMPLEMENTED = "Not implemented by this server: accepted only at a value that asks for nothing (leave it out)."
NonEmpty = Annotated[str, Field(min_length=1)]
TOKEN_ID = r"^[0-9]+$"
TokenId = Annotated[str, StringConstraints(pattern=TOKEN_ID)]
Bias = Annotated[float, Field(ge=-100.0, le=100.0)]
Nothing = Annotated[list[Any], Field(max_length=0)]


STEERED_DOC = ("True where steering acts on the choice (clamps, a preset's system prompt, a `steer` monitor); "
               "false for a compare baseline and for a request that only reads or steers nothing (extension).")


def _refuse(value: Any, handler: Any, info: Any) -> Any:
    try:
        return handler(value)
    except ValidationError:
        raise ValueError(f"this server does not implement '{info.field_name}'; leave it out") from None


def unimplemented(accepted: Any) -> Any:
    """An OpenAI field this server does not implement: null, or `accepted` (the values that ask for nothing);
    anything else is a 400 that says so."""
    return Annotated[Union[accepted, None], WrapValidator(_refuse), Field(description=NOT_IMPLEMENTED)]


class TextResponseFormat(BaseModel):
    model_config = STRICT
    type: Literal["text"]


# deviation: content_filter comes from a `stop` monitor of the steering extension, not a moderation model
FinishReason = Literal["stop", "length", "content_filter"]
FINISH_REASONS: tuple[str, ...] = get_args(FinishReason)  # the finish reasons a client sees ("cancelled" never)


# ------------------------------------------------------------------ request
class StreamOptions(BaseModel):
    model_config = LENIENT
    include_usage: bool = False


class SteeringFeature(BaseModel):
    """One feature clamp of the `steering` extension."""

    model_config = STRICT
    index: JsonInt = Field(ge=0, description="The SAE feature's index (0 <= index < d_sae; see GET /v1/features).")
    value: float = Field(
        ge=-MAX_FEATURE_VALUE,
        le=MAX_FEATURE_VALUE,
        description=(
            "The clamp value, finite, |value| <= 1000. With unit `max` a multiple of the feature's largest "
            "activation seen in the data (10 is a strong clamp); with unit `raw` an activation; for mode "
            "`scale` a plain factor."
        ),
    )
    mode: ClampMode = Field(
        "clamp",
        description=MODES_DOC + ".",
    )
    unit: ClampUnit = Field(
        "max", description="Unit of value for the modes that take one: " + UNITS_DOC + "."
    )


class SteeringOptions(BaseModel):
    """The `steering` extension (clients send it in `extra_body`)."""

    # `strength` scales what auto-steer picks for `concept`: without a concept it is a 400, and the schema says so.
    model_config = {**STRICT, "json_schema_extra": {"dependentSchemas": {
        "strength": {"required": ["concept"], "properties": {"concept": {"type": "string"}}},
        "method": {"required": ["concept"], "properties": {"concept": {"type": "string"}}}}}}
    preset: str | None = Field(None, description="Name of a preset (GET /v1/presets) whose features apply first.")
    features: list[SteeringFeature] = Field(
        default_factory=list,
        max_length=MAX_STEERING_FEATURES,
        description="Feature clamps, merged over the preset's: on the same index the request wins.",
    )
    positions: Positions | None = Field(
        None,
        description="Where clamps apply: " + POSITIONS_DOC + ". With `generated_limit` a pair: both come from "
        "the request if it sets either, else from auto-steer (with `concept`), else from the preset (default "
        "`all`, no limit).",
    )
    generated_limit: GeneratedLimit = Field(
        None,
        description="Clamp only the first N generated tokens, then let the plain model continue (a nudge; "
        "null: every generated token). Not with positions `prompt`.",
    )
    compare: bool = Field(
        False,
        description="Also return the unsteered baseline from the same seed: choices 0..n-1 are steered, "
        "n..2n-1 the baselines (choice n+i is the baseline of choice i); every choice carries `steered`.",
    )
    concept: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_CONCEPT_CHARS,
        description="Auto-steer: a concept in words (e.g. `dogs`); the server picks the SAE features and values "
        "for it by concept search. Merge order: the preset's features, then the concept's, then `features` "
        "(on the same index the later wins). The response's `steering` reports what was used.",
    )
    strength: float = Field(
        1.0,
        gt=0.0,
        le=MAX_STRENGTH,
        description=f"Auto-steer strength, 0 < strength <= {MAX_STRENGTH:g}: scales the concept's clamp values "
        "(1 is the calibrated default). Only with `concept`.",
    )
    method: AutoSteerMethod = Field(  # type: ignore[valid-type]
        DEFAULT_METHOD,
        description="How auto-steer steers `concept`: `direction` adds the concept's difference in means over "
        f"{DIRECTION_FEATURES} features (each feature's mean activation on texts about it minus on unrelated "
        "texts); `feature` "
        "clamps the one feature a short generation probe finds lifts the concept most. Only with `concept`.",
    )

    inspect: InspectOptions | None = Field(
        None, description="Read the SAE features at every generated token (with `positions: all`, the prompt's "
        "too): each choice (baselines too) reports `inspection`, each stream chunk its tokens' readings.")
    monitors: list[MonitorOptions] = Field(
        default_factory=list, max_length=MAX_MONITORS,
        description="Features watched at every generated token, after the preset's monitors: a crossing is a "
        "`monitor_events` entry; `stop` ends that choice with finish_reason `content_filter`.")

    @field_validator("concept")
    @classmethod
    def _check_concept(cls, concept: str | None) -> str | None:
        if concept is not None and not concept.strip():
            raise ValueError("the concept must contain a non-blank character")
        return concept


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions. Field order follows OpenAI's reference."""

    model_config = STRICT  # unknown fields are errors; a bool is not a number, a string not an index
    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="Lowers a token's logit by this times "
                                     "its count in the answer so far.")
    logit_bias: dict[TokenId, Bias] | None = Field(
        None, max_length=MAX_LOGIT_BIAS, json_schema_extra={"propertyNames": {"pattern": TOKEN_ID}},
        description="Token id (as a string) -> bias in [-100, 100] added to "
        "its logit at every step (-100 bans the token, 100 all but forces it).")
    logprobs: bool = False
    max_completion_tokens: bounded_int(ge=1) | None = None  # type: ignore[valid-type]
    max_tokens: bounded_int(ge=1) | None = Field(  # type: ignore[valid-type]
        None, description="Deprecated by OpenAI in favour of max_completion_tokens.")
    n: JsonInt = Field(1, ge=1, le=MAX_N)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="Lowers the logit of every token already "
                                    "in the answer by this.")
    # Any integer: only its value modulo 2^63 seeds the sampler (an int64 bound would reach the OpenAPI page as
    # a float, 2^63, that the bound itself refuses).
    seed: JsonInt | None = Field(None, description="Choice i samples with seed + i (any integer, used modulo 2^63).")
    stop: NonEmpty | Annotated[list[NonEmpty], Field(max_length=MAX_STOP)] | None = Field(
        None, description=f"Up to {MAX_STOP} non-empty strings that end the answer.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_logprobs: bounded_int(0, MAX_TOP_LOGPROBS) | None = None  # type: ignore[valid-type]
    top_p: float = Field(1.0, ge=0.0, le=1.0)
    user: str | None = None

    # ---- OpenAI fields not implemented: accepted only where they ask for nothing ----------
    tools: unimplemented(Nothing) = None
    tool_choice: unimplemented(Literal["none", "auto"]) = None
    parallel_tool_calls: unimplemented(bool) = None
    functions: unimplemented(Nothing) = None
    function_call: unimplemented(Literal["none", "auto"]) = None
    response_format: unimplemented(TextResponseFormat) = None
    audio: unimplemented(None) = None
    modalities: unimplemented(list[Literal["text"]]) = None
    prediction: unimplemented(None) = None
    reasoning_effort: unimplemented(None) = None
    service_tier: unimplemented(Literal["auto", "default"]) = None
    store: unimplemented(Literal[False]) = None
    metadata: unimplemented(Annotated[dict[str, str], Field(max_length=0)]) = None
    web_search_options: unimplemented(None) = None
    verbosity: unimplemented(None) = None

    # ---- vLLM's sampling extras ---------------------------------------------
    top_k: JsonInt = Field(0, ge=-1, description="Sample among the k likeliest tokens only (0 or -1: off).")
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="Drop tokens whose probability is below min_p times "
                         "the likeliest's.")
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0, description="CTRL's penalty on every token of the "
                                      "prompt and answer: a positive logit is divided by it, a negative one "
                                      "multiplied (1: off).")
    min_tokens: JsonInt = Field(0, ge=0, description="The end token is banned until this many tokens are generated.")
    ignore_eos: bool = Field(False, description="Keep generating past the end token (until max_tokens or a stop).")

    # ---- extension: SAE steering (not part of OpenAI's API) ----------------
    steering: SteeringOptions | None = Field(
        None,
        description="Steer the model by clamping SAE features (extension; send it in the OpenAI client's extra_body).",
    )

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


# ----------------------------------------------------------------- response
class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
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
    finish_reason: FinishReason | None
    # ---- extension: SAE steering ------------------------------------------
    steered: bool = Field(description=STEERED_DOC)
    inspection: list[TokenFeatures] | None = Field(
        None, description="Per token, the features read (with `steering.inspect`; null without it).")
    monitor_events: list[MonitorEventOut] | None = Field(
        None, description="The monitors' crossings (with `steering.monitors`; null without them).")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


# ---- extension: the steering a response used ----------------------------------
class ConceptSteering(BaseModel):
    """What auto-steer chose for `steering.concept`."""

    concept: str
    strength: float
    method: str = Field(description="`direction` or `feature` (the request's `steering.method`).")
    features: list[int] = Field(description="The indices auto-steer picked (their values are in the report's "
                                "`features` unless the request's own features overrode them).")
    rationale: str
    candidates: list[FeatureMatch] = Field(description="The ranked concept candidates (`match: concept`).")
    probe: list["ConceptProbe"] = Field(default_factory=list, description="Each candidate's probe (short seeded "
                                        "answers with it clamped), the evidence auto-steer picked by (method "
                                        "`feature`; empty for `direction`).")


class ConceptProbe(BaseModel):
    """One candidate's probe (steering.concepts.probe): rates over `n_answers` answers, delta loss in nats."""

    index: int
    concept_rate: float
    baseline_rate: float
    lift: float = Field(description="concept_rate - baseline_rate; auto-steer takes the largest among "
                        "candidates with baseline_rate <= 0.25 (a broader judge cannot tell).")
    repeated_4gram: float
    delta_loss: float | None
    n_answers: int


class AppliedFeature(BaseModel):
    """A clamp as applied: a request's `steering.features` item (values reported unbounded, as used)."""

    index: int
    value: float
    mode: ClampMode
    unit: ClampUnit


class AppliedSteering(BaseModel):
    """The steering a response used (extension). `features` and `positions` paste into a preset file
    (presets/README.md) or back into a request's `steering` to reproduce it without the concept search."""

    features: list[AppliedFeature] = Field(description="The merged clamps applied to the steered choices.")
    positions: Positions
    generated_limit: int | None = Field(None, description="Clamps stop after this many generated tokens (null: never).")
    monitors: list[MonitorOptions] = Field(default_factory=list, description="The monitors every choice ran "
                                           "(the preset's, then the request's).")
    preset: str | None = Field(None, description="The preset named by the request.")
    concept: ConceptSteering | None = Field(None, description="Auto-steer's choice; null without steering.concept.")
    max_unit: str = Field("sae", description="Where a `max` unit's scale (each feature's max activation) comes "
                          "from: `sae` (the SAE's own statistics) or, for an SAE that ships none, the estimate this "
                          "server measured on sample text (how many tokens, where it is cached).")


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    system_fingerprint: str | None = None
    usage: Usage
    # ---- extension: SAE steering ------------------------------------------
    steering: AppliedSteering | None = Field(
        None, description="The steering used (extension); null when the request had no `steering`.")


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None
    # ---- extension: SAE steering ------------------------------------------
    steered: bool = Field(description=STEERED_DOC)
    inspection: list[TokenFeatures] | None = Field(
        None, description="The readings of this chunk's tokens (with `steering.inspect`).")
    monitor_events: list[MonitorEventOut] | None = Field(
        None, description="Monitor crossings at this chunk's tokens (with `steering.monitors`).")


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    # Present (null until the last chunk) only with stream_options.include_usage.
    usage: Usage | None = None
    # ---- extension: SAE steering ------------------------------------------
    steering: AppliedSteering | None = Field(
        None, description="The steering used (extension): on the stream's first chunk only, when the request "
        "had a `steering` block; absent from every other chunk.")


ConceptSteering.model_rebuild()
