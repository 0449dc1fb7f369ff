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
on a small budget, with three shortcuts that leave every rate the same:

- the plain answers depend on no concept: they are generated and read once
  per SAE and settings (`PlainAnswers`, `plain_answers`; auto-steer makes
  them at its first `feature` request, or at start-up where that is its method), with every
  feature's peak, so any candidate's baseline judge is a look-up;
- a steered answer's feature firing is read while it is generated (a
  monitor on the candidate at fire_fraction x max, `Answer.crossed`): the
  clamps act after the SAE's site, so the layers up to it, and the site's
  value before the edit, are the plain model's reading of the same tokens;
- delta_loss, the one figure that needs the plain model's full forward of a
  steered answer, is only the pick's tie-break: with `losses="best"` it is
  measured for the judged candidates at the best lift (None for the others),
  with `losses="all"` for every candidate.

PROBE_PROMPTS are neutral prompts kept apart from the evaluation's prompt
set, so `eval-steering --concept` does not measure auto-steer on the
prompts it was chosen on.

Cost per concept: candidates x len(prompts) answers of `max_tokens` tokens
(one batch), then a scoring forward of the best candidates' answers over the
prompts' kept K/V.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from steering.concepts.search import number_forms
from steering.engine.requests import SequenceRequest
from steering.engine.sampling import SamplingParams
from steering.evaluation.metrics import concept_word_pattern, has_concept_words, mean, rate, repeated_ngram_share
from steering.evaluation.run import INLINE, Runner, generate_answers, score_in_chunks
from steering.evaluation.scoring import Answer, ContextCache
from steering.evaluation.targets import Concept, EvalSettings
from steering.interventions import SteeringSpec
from steering.monitors import Monitor

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
# A feature fires in an answer when its peak reaches this share of its max activation (where the max is
# unknown, when it is above 0): the evaluation's judge, and its batch sizes.
FIRE_FRACTION = Concept.fire_fraction
BATCH_SIZE = EvalSettings.batch_size  # rows per generation call (INLINE)
SCORE_BATCH_SIZE = EvalSettings.score_batch_size  # rows per scoring forward
LOSSES = ("best", "all")


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


@dataclass(frozen=True)
class PlainAnswers:
    """The probe's unsteered answers to `settings.prompts` (seeded as the steered rows), read back.

    contexts[j]: prompt j's chat ids; losses[j]: the answer's mean next-token loss (None when empty);
    peaks [n, d_sae]: each feature's max over the answer's tokens of f_i / max_i (raw f_i where max_i
    is unknown; 0 for an empty answer); `contexts_kept`: the prompts' forwards, reused to score
    steered answers in the same contexts."""

    settings: ProbeSettings
    contexts: tuple[tuple[int, ...], ...]
    sampling: tuple[SamplingParams, ...]
    answers: tuple[Answer, ...]
    losses: tuple[float | None, ...]
    peaks: torch.Tensor
    contexts_kept: ContextCache


def plain_answers(sm: "SteeredModel", settings: ProbeSettings | None = None, runner: Runner = INLINE) -> PlainAnswers:
    """Generate and read back the plain answers for `settings` (default ProbeSettings())."""
    settings = settings if settings is not None else ProbeSettings()
    prompts = list(settings.prompts)
    contexts = tuple(tuple(sm.prompt_ids([{"role": "user", "content": p}])) for p in prompts)
    sampling = tuple(SamplingParams(max_tokens=settings.max_tokens, temperature=settings.temperature,
                                    seed=settings.seed + j) for j in range(len(prompts)))
    answers = generate_answers(sm, runner, [SequenceRequest(c, p) for c, p in zip(contexts, sampling)], BATCH_SIZE)
    kept = ContextCache(max_contexts=len(set(contexts)))
    d_sae = sm.sae.d_sae if sm.sae is not None else 0
    losses, peaks = score_in_chunks(sm, runner, contexts, [a.ids for a in answers], range(d_sae),
                                    SCORE_BATCH_SIZE, kept)
    table = torch.zeros(len(answers), d_sae)
    for j, row in enumerate(peaks):
        if row is not None:
            table[j] = torch.tensor(row)
    return PlainAnswers(settings, contexts, sampling, tuple(answers), tuple(losses), table, kept)


def _fires(sm: "SteeredModel", index: int, fire_fraction: float) -> Monitor:
    """A monitor that crosses when feature `index` reaches fire_fraction x its max (above 0 without a max)."""
    if math.isfinite(float(sm.sae.max_activation[index])):
        return Monitor(index, fire_fraction, "max", "flag")
    return Monitor(index, float(torch.finfo(torch.float32).tiny), "raw", "flag")


def probe_specs(sm: "SteeredModel", concept: str, specs: Sequence[tuple[int, SteeringSpec]],
                settings: ProbeSettings = ProbeSettings(), runner: Runner = INLINE,
                plain: PlainAnswers | None = None, losses: str = "best") -> list[ProbeResult]:
    """Probe each (feature index, spec) pair; results in the given order.

    The judge for candidate i is the concept's words or feature i firing, so
    a candidate is credited for what its own clamp makes the answer say.
    `plain`: the plain answers for `settings` (made here when None or for other
    settings); `losses`: which candidates get a delta_loss (module docstring).
    """
    if losses not in LOSSES:
        raise ValueError(f"losses must be one of {LOSSES}, got {losses!r}")
    if not specs:
        return []
    if plain is None or plain.settings != settings:
        plain = plain_answers(sm, settings, runner)
    n = len(plain.contexts)
    pattern = concept_word_pattern(number_forms(concept.strip()))
    # Prompt by prompt, so that a prefill forward holds one prompt's candidates (their first layers are
    # computed once: `LlamaRunner`); candidate k's answer to prompt j is row j * K + k.
    K = len(specs)
    requests = [SequenceRequest(plain.contexts[j], plain.sampling[j], spec, None, (_fires(sm, index, FIRE_FRACTION),))
                for j in range(n) for index, spec in specs]
    generated = generate_answers(sm, runner, requests, BATCH_SIZE)
    answers = [generated[j * K + k] for k in range(K) for j in range(n)]  # candidate by candidate
    plain_words = [has_concept_words(a.text, pattern) for a in plain.answers]
    results: list[ProbeResult] = []
    for k, (index, _) in enumerate(specs):
        own = answers[k * n : (k + 1) * n]
        known = math.isfinite(float(sm.sae.max_activation[index]))
        plain_fires = [bool(a.ids) and (float(p) >= FIRE_FRACTION if known else float(p) > 0)
                       for a, p in zip(plain.answers, plain.peaks[:, index])]
        results.append(ProbeResult(
            index,
            concept_rate=rate(has_concept_words(a.text, pattern) or a.crossed for a in own) or 0.0,
            baseline_rate=rate(w or f for w, f in zip(plain_words, plain_fires)) or 0.0,
            repeated_4gram=mean(repeated_ngram_share(a.text) for a in own) or 0.0,
            delta_loss=None, n_answers=n))
    lifted = [r.lift for r in results if judged(r)]
    top = max(lifted, default=0.0)
    scored = [k for k, r in enumerate(results) if losses == "all" or (top > 0 and judged(r) and r.lift == top)]
    if scored:
        rows = [k * n + j for k in scored for j in range(n)]
        steered, _ = score_in_chunks(sm, runner, [plain.contexts[r % n] for r in rows], [answers[r].ids for r in rows],
                                     (), SCORE_BATCH_SIZE, plain.contexts_kept)
        base = mean(plain.losses)
        for m, k in enumerate(scored):
            loss = mean(steered[m * n : (m + 1) * n])
            delta = None if loss is None or base is None else loss - base
            results[k] = dataclasses.replace(results[k], delta_loss=delta)
    return results


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
