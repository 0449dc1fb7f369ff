"""What a reading reports, per token: the shapes shared by POST /v1/inspect and a generation's
`steering.inspect` and `steering.monitors` (extensions)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.protocol.common import (
    MAX_CLAMP_VALUE,
    MAX_CLAMPS,
    MAX_GENERATED_LIMIT,
    STRICT,
    ClampMode,
    ClampUnit,
    JsonInt,
    bounded_int,
)
from steering.monitors import MAX_MONITOR_NAME, MONITOR_ACTIONS
from steering.readings import INSPECT_POSITIONS, MAX_NAMED_FEATURES, MAX_TOP_K

InspectPositions = Literal[tuple(INSPECT_POSITIONS)]  # type: ignore[valid-type]
MonitorAction = Literal[tuple(MONITOR_ACTIONS)]  # type: ignore[valid-type]


class InspectOptions(BaseModel):
    """What to read per token."""

    model_config = STRICT
    top_k: JsonInt = Field(8, ge=0, le=MAX_TOP_K, description="How many of the most active features per token.")
    features: list[JsonInt] = Field(default_factory=list, max_length=MAX_NAMED_FEATURES,
                                description="Features whose value is reported at every token, active or not.")
    positions: InspectPositions = Field(  # type: ignore[valid-type]
        "generated", description="In a chat completion: the `generated` tokens only, or `all` (the prompt's too). "
        "POST /v1/inspect reads every token but position 0 (an attention sink).")


class FeatureActivation(BaseModel):
    index: int
    activation: float
    relative_activation: float | None = Field(description="activation / the feature's max activation (null if unknown).")
    label: str | None = Field(None, description="The catalogue's label, when the SAE has one.")


class TokenFeatures(BaseModel):
    position: int = Field(description="The token's position in the rendered sequence (prompt and answer).")
    token: str
    token_id: int
    top: list[FeatureActivation] = Field(description="The most active features, largest first (only f > 0).")
    features: list[FeatureActivation] = Field(default_factory=list, description="The requested features, in order.")


class MonitorClamp(BaseModel):
    """A clamp a `steer` monitor applies (the fields of `steering.features[]`)."""

    model_config = STRICT
    index: JsonInt = Field(ge=0)
    value: float = Field(ge=-MAX_CLAMP_VALUE, le=MAX_CLAMP_VALUE)
    mode: ClampMode = "clamp"
    unit: ClampUnit = "max"


class MonitorOptions(BaseModel):
    """Watch a feature at every generated token."""

    model_config = STRICT
    index: JsonInt = Field(ge=0, description="The SAE feature watched.")
    threshold: float = Field(gt=0, description="Crossed when the feature's activation reaches it (rising edge).")
    unit: ClampUnit = Field("max", description="`max`: a multiple of the feature's max activation; `raw`.")
    action: MonitorAction = Field(  # type: ignore[valid-type]
        "flag", description="; ".join(f"`{k}`: {v}" for k, v in MONITOR_ACTIONS.items()) + ".")
    name: str | None = Field(None, max_length=MAX_MONITOR_NAME, description="Reported with each event.")
    clamps: list[MonitorClamp] = Field(default_factory=list, max_length=MAX_CLAMPS, description="With action "
                                       "`steer`: the clamps applied to that choice from the token after the crossing.")
    duration: bounded_int(1, MAX_GENERATED_LIMIT) | None = Field(  # type: ignore[valid-type]
        None, description="With `steer`: how many tokens the clamps last (null: to the end).")


class MonitorEventOut(BaseModel):
    """A monitor's threshold crossed at a generated token."""

    name: str
    index: int
    label: str | None = None
    token_index: int = Field(description="Index of the token among the choice's generated tokens (0-based).")
    position: int = Field(description="Its position in the sequence (prompt and answer).")
    value: float
    threshold: float = Field(description="In activation units.")
    action: MonitorAction  # type: ignore[valid-type]
