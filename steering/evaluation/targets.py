"""What a steering evaluation measures: targets, how answers are judged, its settings and bounds.

An `EvalTarget` is a spec, the `Concept` its answers should carry (concept
words, concept features firing at >= fire_fraction x their max, or either),
the system prompt of its steered rows (a preset's, if any), its goal (steer
the concept in, or suppress it), the system prompt of its prompting baseline
(rows with that system prompt and no clamps, the comparison AxBench holds
steering against), and the monitors
its steered rows carry (a conditional preset's `steer` monitors: its clamps
start only where the monitor fires). `Bounds` are
the project's efficacy targets; `EvalSettings` the sampling and batch sizes
of a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from steering.interventions import FeatureClamp, SteeringSpec
from steering.monitors import Monitor
from steering.presets import Preset


@dataclass(frozen=True)
class Concept:
    """How an answer is judged to carry the concept (see the module docstring)."""

    words: tuple[str, ...] = ()
    features: tuple[int, ...] = ()
    fire_fraction: float = 0.2

    @classmethod
    def for_spec(cls, spec: SteeringSpec, words: Sequence[str] = (), features: Sequence[int] | None = None,
                 fire_fraction: float = 0.2, monitors: Sequence[Monitor] = ()) -> "Concept":
        """Concept features default to the clamps that push a feature up: the spec's, then the
        `steer` monitors' (a conditional preset's clamps)."""
        if features is None:
            clamps: list[FeatureClamp] = list(spec.features) + [c for m in monitors for c in m.clamps]
            features = [c.index for c in clamps
                        if (c.mode in ("clamp", "add") and c.value > 0) or (c.mode == "scale" and c.value > 1)]
        return cls(tuple(w for w in words if w.strip()), tuple(dict.fromkeys(features)), fire_fraction)

    @property
    def rule(self) -> str:
        if self.words and self.features:
            return "concept word OR concept feature firing"
        if self.words:
            return "concept word"
        return "concept feature firing" if self.features else "none (no concept words or features given)"


@dataclass(frozen=True)
class EvalSettings:
    max_tokens: int = 48
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    # Answers per prompt: sample k of prompt j (of n) is seeded seed + k * n + j. More samples, less
    # noise: on 46 prompts one answer moves a rate by 2.2 points.
    samples: int = 1
    system_prompt: str | None = None  # steered rows of evaluate_specs/evaluate only
    batch_size: int = 64  # rows per generate_batch call
    score_batch_size: int = 8  # rows per scoring forward (full logits: keep small)
    n_examples: int = 4
    # Which prompts were answered, recorded with the results (steering.evaluation.prompts): a named set and
    # its half, or None for prompts given directly.
    prompt_set: str | None = None
    half: str | None = None


@dataclass(frozen=True)
class Bounds:
    """The project's efficacy targets for a preset (issue: steering that works)."""

    concept_rate: float = 0.8
    baseline_concept_rate: float = 0.05
    repeated_4gram: float = 0.2
    delta_loss: float = 1.0
    # A suppression preset (goal "suppress"), on prompts about its concept: the plain answers carry it
    # at least this often, the steered ones at most this often.
    topic_baseline_rate: float = 0.8
    suppressed_rate: float = 0.2



@dataclass(frozen=True)
class EvalTarget:
    """One thing to evaluate: a spec, how to judge its answers, and the system prompt of its steered rows."""

    label: str
    spec: SteeringSpec
    concept: Concept
    system_prompt: str | None = None
    monitors: tuple[Monitor, ...] = ()
    goal: str = "steer"  # or "suppress" (steering.presets.GOALS)
    compare_prompt: str | None = None  # the prompting baseline: this system prompt, no clamps

    @classmethod
    def from_preset(cls, preset: Preset) -> "EvalTarget":
        concept = Concept.for_spec(preset.spec, preset.concept_words, preset.concept_features,
                                   monitors=preset.monitors)
        return cls(preset.name, preset.spec, concept, preset.system_prompt, preset.monitors, preset.goal,
                   preset.compare_prompt)

