"""Concept probe: try each candidate feature on a few short answers and measure which steers.

The concept search (`steering.concepts.search`) ranks features by how specifically
they fire on text about a concept; at layer 15 of the shipped SAE its top
features are often token detectors that do not steer (clamped, "sport ->"
features add no sports talk). A probe answers the question auto-steer
actually asks, by generation:

    for each candidate i:   clamp i to `value` x max for the first `window`
                            generated tokens, answer `prompts` (seeded, T 0.7)
    concept_rate[i]  = share of answers with a concept word (the concept in
                       simple singular and plural) or feature i firing
                       (>= 0.2 x its max, read back by the plain model)
    baseline_rate[i] = the same judge on the plain answers (same seeds)
    lift[i]          = concept_rate[i] - baseline_rate[i]   (only for candidates
                       with baseline_rate[i] <= MAX_BASELINE_RATE: a feature that
                       fires on plain answers is too broad to judge by)
    delta_loss[i]    = mean next-token loss of the steered answers under the
                       plain model minus the plain answers'

It is the steering evaluation (`steering.evaluation.run.evaluate_targets`)
on a small budget: all candidates and one shared baseline in one batch.
PROBE_PROMPTS are neutral prompts kept apart from the evaluation's prompt
set, so `eval-steering --concept` does not measure auto-steer on the
prompts it was chosen on.

Cost: (candidates + 1) x len(prompts) answers of `max_tokens` tokens, plus
one scoring forward per answer (the shipped SmolLM2 and SAE on 2 CPU cores:
auto-steer's search and probe of 5-8 candidates took 7-12 s with the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from steering.concepts.search import number_forms
from steering.evaluation.run import INLINE, Concept, EvalSettings, EvalTarget, Runner, evaluate_targets
from steering.interventions import SteeringSpec

if TYPE_CHECKING:
    from steering.steered_model import SteeredModel

PROBE_PROMPTS: tuple[str, ...] = (
    "What is on your mind this morning?",
    "Write a few words about a window.",
    "Tell me about something you noticed recently.",
    "What could I do this evening?",
)


# A candidate whose judge fires on more than this share of the plain answers is not judged (`judged`).
MAX_BASELINE_RATE = 0.25


@dataclass(frozen=True)
class ProbeSettings:
    """The probe's budget and sampling (hashable: auto-steer caches by it)."""

    prompts: tuple[str, ...] = PROBE_PROMPTS
    max_tokens: int = 16
    temperature: float = 0.7
    seed: int = 0


@dataclass(frozen=True)
class ProbeResult:
    """One candidate's probe (rates in [0, 1]; delta_loss in nats, None when nothing was scored)."""

    index: int
    concept_rate: float
    baseline_rate: float
    repeated_4gram: float
    delta_loss: float | None
    n_answers: int

    @property
    def lift(self) -> float:
        return self.concept_rate - self.baseline_rate

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "concept_rate": self.concept_rate, "baseline_rate": self.baseline_rate,
                "lift": self.lift, "repeated_4gram": self.repeated_4gram, "delta_loss": self.delta_loss,
                "n_answers": self.n_answers}


def probe_specs(sm: "SteeredModel", concept: str, specs: Sequence[tuple[int, SteeringSpec]],
                settings: ProbeSettings = ProbeSettings(), runner: Runner = INLINE) -> list[ProbeResult]:
    """Probe each (feature index, spec) pair; results in the given order.

    The judge for candidate i is the concept's words or feature i firing, so
    a candidate is credited for what its own clamp makes the answer say.
    """
    if not specs:
        return []
    words = tuple(number_forms(concept.strip()))
    targets = [EvalTarget(str(index), spec, Concept(words, (index,))) for index, spec in specs]
    results = evaluate_targets(sm, targets, list(settings.prompts),
                               EvalSettings(max_tokens=settings.max_tokens, temperature=settings.temperature,
                                            seed=settings.seed), runner)
    return [ProbeResult(index, r.concept_rate, r.baseline_concept_rate, r.repeated_4gram, r.delta_loss, r.n_answers)
            for (index, _), r in zip(specs, results)]


def judged(r: ProbeResult, max_baseline: float = MAX_BASELINE_RATE) -> bool:
    """Whether the probe can judge this candidate: its judge must stay quiet on the plain answers.
    A feature firing on many plain answers is a broad one (a suffix, 'about'); its own firing says
    little about the concept, and its lift is noise."""
    return r.baseline_rate <= max_baseline


def ranked_probes(results: Sequence[ProbeResult], max_baseline: float = MAX_BASELINE_RATE) -> list[ProbeResult]:
    """The judged candidates that lift the concept rate, largest lift first (ties: the smaller
    delta loss, a scored one before an unscored one, then the earlier one)."""
    lifted = [r for r in results if r.lift > 0 and judged(r, max_baseline)]
    return sorted(lifted, key=lambda r: (-r.lift, r.delta_loss if r.delta_loss is not None else float("inf")))


def best_probe(results: Sequence[ProbeResult], max_baseline: float = MAX_BASELINE_RATE) -> ProbeResult | None:
    """The first of `ranked_probes`; None when no judged candidate lifts the concept rate at all."""
    ranked = ranked_probes(results, max_baseline)
    return ranked[0] if ranked else None
