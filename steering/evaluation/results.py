"""What a steering evaluation reports: per answer, per target, and as a README table."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from steering.evaluation.targets import Bounds


@dataclass
class AnswerRecord:
    prompt: str
    steered: str
    baseline: str
    steered_words: bool | None
    baseline_words: bool | None
    steered_peak: float | None
    baseline_peak: float | None
    steered_rep4: float
    baseline_rep4: float
    steered_loss: float | None
    baseline_loss: float | None
    steered_tokens: int
    baseline_tokens: int


@dataclass
class EvalResult:
    """One spec's figures over the prompts; `to_dict()` is JSON-able."""

    label: str
    spec: dict[str, Any]
    n_prompts: int
    n_answers: int  # per side: n_prompts x settings.samples
    concept_words: list[str]
    concept_features: list[int]
    concept_rule: str
    concept_rate: float | None
    baseline_concept_rate: float | None
    word_rate: float | None
    baseline_word_rate: float | None
    feature_rate: float | None
    baseline_feature_rate: float | None
    repeated_4gram: float
    baseline_repeated_4gram: float
    loss: float | None
    baseline_loss: float | None
    delta_loss: float | None
    settings: dict[str, Any]
    seconds: float  # the whole call (shared by every spec of a sweep)
    generate_seconds: float = 0.0
    score_seconds: float = 0.0
    unchanged_rate: float | None = None  # steered answers equal to their baseline, token for token
    triggered_rate: float | None = None  # with monitors: answers on which one crossed its threshold
    goal: str = "steer"  # "suppress": the concept should leave answers to prompts about it (Bounds)
    # The prompting baseline: the same prompts answered with the target's compare_prompt as the system
    # prompt and no clamps, judged and scored like the steered answers (system_prompt, concept_rate,
    # word_rate, feature_rate, repeated_4gram, delta_loss); None without a compare_prompt.
    prompted: dict[str, Any] | None = None
    examples: list[dict[str, str]] = field(default_factory=list)
    rows: list[AnswerRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def efficacy(self) -> dict[str, Any]:
        """The compact record a preset keeps of its measured efficacy (rates in [0, 1], losses in nats)."""
        keys = ("n_prompts", "n_answers", "concept_rule", "concept_rate", "baseline_concept_rate", "word_rate",
                "baseline_word_rate", "feature_rate", "baseline_feature_rate", "repeated_4gram",
                "baseline_repeated_4gram", "delta_loss", "unchanged_rate", "triggered_rate", "goal", "prompted")
        out: dict[str, Any] = {k: getattr(self, k) for k in keys}
        out.update({k: self.settings.get(k) for k in ("max_tokens", "temperature", "seed", "samples", "fire_fraction",
                                                       "prompt_set", "half")})
        out["meets_targets"] = self.meets()
        return out

    def meets(self, bounds: Bounds = Bounds()) -> bool:
        """All four targets met (a missing concept rate or delta loss fails): for a suppression preset the
        plain answers carry the concept often and the steered ones seldom, else the reverse."""
        if self.concept_rate is None:
            return False
        if self.goal == "suppress":
            rates_ok = (self.concept_rate <= bounds.suppressed_rate
                        and (self.baseline_concept_rate or 0.0) >= bounds.topic_baseline_rate)
        else:
            rates_ok = (self.concept_rate >= bounds.concept_rate
                        and (self.baseline_concept_rate or 0.0) <= bounds.baseline_concept_rate)
        return (rates_ok and self.repeated_4gram <= bounds.repeated_4gram
                and self.delta_loss is not None and self.delta_loss <= bounds.delta_loss)

    def summary(self) -> str:
        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{100 * v:.0f}%"

        dl = "n/a" if self.delta_loss is None else f"{self.delta_loss:+.3f}"
        return (f"{self.label}: concept {pct(self.concept_rate)} (baseline {pct(self.baseline_concept_rate)}; "
                f"words {pct(self.word_rate)}/{pct(self.baseline_word_rate)}, features "
                f"{pct(self.feature_rate)}/{pct(self.baseline_feature_rate)}), repeated 4-grams "
                f"{pct(self.repeated_4gram)} (baseline {pct(self.baseline_repeated_4gram)}), delta loss {dl} nats"
                + ("" if not self.prompted else f"; prompting instead: concept {pct(self.prompted['concept_rate'])}, "
                   f"delta loss {_nats(self.prompted['delta_loss'])}"))


def _nats(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.2f}"



def markdown_table(results: list[EvalResult], bounds: Bounds = Bounds()) -> str:
    """One row per result with a column saying whether it meets `bounds`."""
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    lines = ["| preset | prompts | concept rate | baseline | repeated 4-grams | Δloss (nats) | targets "
             "| prompting instead: concept rate | its Δloss |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        p = r.prompted or {}
        where = f"{r.settings.get('prompt_set') or 'given'} {r.settings.get('half') or ''}".strip()
        lines.append(f"| {r.label}{' (suppress)' if r.goal == 'suppress' else ''} | {where}, {r.n_answers} answers | "
                     f"{pct(r.concept_rate)} | {pct(r.baseline_concept_rate)} | {pct(r.repeated_4gram)} | "
                     f"{_nats(r.delta_loss)} | {'met' if r.meets(bounds) else 'not met'} | "
                     f"{pct(p.get('concept_rate')) if p else '–'} | {_nats(p.get('delta_loss')) if p else '–'} |")
    return "\n".join(lines)
