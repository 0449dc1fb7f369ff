"""GET /v1/presets, /v1/presets/{name}: the wire form of `steering.presets.Preset`.

The library reads and checks preset files (`steering.presets`); these models
only describe what the routes return.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, JsonValue

from api.protocol.common import ClampMode, ClampUnit, GeneratedLimit, Positions
from api.protocol.readings import MonitorOptions


class PresetFeature(BaseModel):
    """A preset's clamp and its label (a note for people; not used by the engine)."""

    index: int
    value: float
    mode: ClampMode
    unit: ClampUnit
    label: str | None = None


class Preset(BaseModel):
    """A preset file (presets/NAME.json); see presets/README.md."""

    name: str
    description: str
    model: str = Field(description="The model id the features belong to (GET /v1/models).")
    sae: str = Field(description="The SAE id the feature indices refer to.")
    features: list[PresetFeature]
    positions: Positions = "all"
    generated_limit: GeneratedLimit = Field(None, description="Clamp only the first N generated tokens (null: all).")
    system_prompt: str | None = None
    concept_words: list[str] = Field(default_factory=list, description="Words that mark an answer as on the concept.")
    concept_features: list[int] | None = Field(
        None, description="Features whose firing on an answer marks it as on the concept (evaluation); null: the "
        "preset's own clamps that push a feature up.")
    goal: Literal["steer", "suppress"] = Field(
        "steer", description="steer: brings the concept into answers to neutral prompts; suppress: keeps it out of "
        "answers to prompts about it (evaluation).")
    prompt_set: str = Field("neutral", description="The prompt set its efficacy is measured on (neutral, or a topic "
                            "set such as dogs for a suppression preset).")
    compare_prompt: str | None = Field(
        None, description="A system prompt asking for the same in words: the prompting baseline its efficacy record "
        "compares steering with (efficacy.prompted).")
    monitors: list[MonitorOptions] = Field(default_factory=list, description="Features watched while it generates "
                                           "(merged before a request's own `steering.monitors`).")
    efficacy: dict[str, JsonValue] | None = Field(
        None, description="The measured efficacy record (free-form; keys in presets/README.md, e.g. concept_rate, "
        "baseline_concept_rate, repeated_4gram, delta_loss, n_prompts, max_tokens, seed, measured_at, command).")
    notes: str | None = None


class PresetInfo(Preset):
    object: Literal["preset"] = "preset"
    available: bool = Field(description="False when the preset targets another model or SAE than the loaded ones.")
    unavailable_reason: str | None = None


class PresetList(BaseModel):
    object: Literal["list"] = "list"
    data: list[PresetInfo]

