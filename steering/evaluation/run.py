"""Does a steering spec steer? Concept rate and fluency on neutral prompts.

An `EvalTarget` is a spec, the concept its answers should carry, and the
system prompt of its steered rows (a preset's, if any). For each neutral
prompt p_j (steering/data/neutral_prompts.txt by default) and each target,
one steered answer and one baseline answer (no clamps, no system prompt) are
sampled with the same seed (settings.seed + j), all rows batched through
`generate_batch`; baselines are generated once and shared by every target of
a call (a sweep, several presets). Then every answer is read once by the
UNSTEERED model in the baseline's context (chat prompt + answer tokens):

    loss(answer)   = mean over answer tokens t of  -log p(t | context, earlier tokens)
    peak(answer)   = max over answer tokens and concept features i of  f_i / max_act_i
                     (f at the SAE's hook site; raw f when max_act_i is unknown)

Reported per target (answers with no tokens count for rates, not for losses):

    word_rate       share of answers with a concept word (see eval_metrics)
    feature_rate    share of answers with peak >= concept.fire_fraction
                    (> 0 where a max activation is unknown)
    concept_rate    the combined rule: words OR features when both are given,
                    else whichever is given; None when neither is
    repeated_4gram  mean over answers of the repeated 4-gram share (eval_metrics)
    delta_loss      mean loss of the steered answers minus that of the
                    baselines, in nats (> 0: the plain model finds them less likely)

and the same rates for the baselines. Concept features default to the spec's
own positive clamps ("does the plain model, reading the answer, see the
concept?"); a preset may name others in `concept_features`.

Prompts and presets are read by `steering.evaluation.prompts`.

CLI: `python -m steering eval-steering ...` (steering.cli.evaluate).
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext as _nullcontext
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from steering.evaluation.prompts import EvalPreset, load_preset, load_prompts, scaled_spec, spec_to_dict  # noqa: F401 (re-exported)
from steering.evaluation.metrics import concept_word_pattern, has_concept_words, mean, rate, repeated_ngram_share
from steering.engine.generation import SequenceRequest, generate_batch
from steering.hooks import capture
from steering.interventions import SteeringError, SteeringSpec
from steering.engine.sampling import SamplingParams

# ----------------------------------------------------------------- settings
@dataclass(frozen=True)
class Concept:
    """How an answer is judged to carry the concept (see the module docstring)."""

    words: tuple[str, ...] = ()
    features: tuple[int, ...] = ()
    fire_fraction: float = 0.2

    @classmethod
    def for_spec(cls, spec: SteeringSpec, words: Sequence[str] = (), features: Sequence[int] | None = None,
                 fire_fraction: float = 0.2) -> "Concept":
        """Concept features default to the spec's clamps that push a feature up."""
        if features is None:
            features = [c.index for c in spec.features
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


@dataclass(frozen=True)
class Bounds:
    """The project's efficacy targets for a preset (issue: steering that works)."""

    concept_rate: float = 0.8
    baseline_concept_rate: float = 0.05
    repeated_4gram: float = 0.2
    delta_loss: float = 1.0


# ----------------------------------------------------------------- results
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
    examples: list[dict[str, str]] = field(default_factory=list)
    rows: list[AnswerRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def efficacy(self) -> dict[str, Any]:
        """The compact record a preset keeps of its measured efficacy (rates in [0, 1], losses in nats)."""
        keys = ("n_prompts", "n_answers", "concept_rule", "concept_rate", "baseline_concept_rate", "word_rate",
                "baseline_word_rate", "feature_rate", "baseline_feature_rate", "repeated_4gram",
                "baseline_repeated_4gram", "delta_loss")
        out: dict[str, Any] = {k: getattr(self, k) for k in keys}
        out.update({k: self.settings.get(k) for k in ("max_tokens", "temperature", "seed", "samples", "fire_fraction")})
        out["meets_targets"] = self.meets()
        return out

    def meets(self, bounds: Bounds = Bounds()) -> bool:
        """All four targets met (a missing concept rate or delta loss fails)."""
        return (self.concept_rate is not None and self.concept_rate >= bounds.concept_rate
                and (self.baseline_concept_rate or 0.0) <= bounds.baseline_concept_rate
                and self.repeated_4gram <= bounds.repeated_4gram
                and self.delta_loss is not None and self.delta_loss <= bounds.delta_loss)

    def summary(self) -> str:
        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{100 * v:.0f}%"

        dl = "n/a" if self.delta_loss is None else f"{self.delta_loss:+.3f}"
        return (f"{self.label}: concept {pct(self.concept_rate)} (baseline {pct(self.baseline_concept_rate)}; "
                f"words {pct(self.word_rate)}/{pct(self.baseline_word_rate)}, features "
                f"{pct(self.feature_rate)}/{pct(self.baseline_feature_rate)}), repeated 4-grams "
                f"{pct(self.repeated_4gram)} (baseline {pct(self.baseline_repeated_4gram)}), delta loss {dl} nats")


# --------------------------------------------------------------- machinery
@dataclass(frozen=True)
class _Answer:
    text: str
    ids: tuple[int, ...]


def _generate(sm: Any, requests: list[SequenceRequest], batch_size: int) -> list[_Answer]:
    texts = [""] * len(requests)
    ids: list[list[int]] = [[] for _ in requests]
    model, tokenizer = sm.loaded.model, sm.loaded.tokenizer
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        for events in generate_batch(model, tokenizer, sm.sae, chunk):
            for e in events:
                texts[start + e.index] += e.text
                if e.token_id is not None:
                    ids[start + e.index].append(e.token_id)
    return [_Answer(t, tuple(i)) for t, i in zip(texts, ids)]


def score_answers(
    sm: Any, contexts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
    features: Sequence[int] = (), batch_size: int = 8,
) -> tuple[list[float | None], list[list[float] | None]]:
    """(loss, peaks) per answer under the unsteered model, each answer after its context.

    loss: mean next-token negative log-likelihood of the answer tokens (None
    for an empty answer). peaks: for each of `features`, the max over answer
    tokens of f_i / max_act_i (raw f_i where max_act_i is unknown); None when
    no features are given or the answer is empty.
    """
    model, sae = sm.loaded.model, sm.sae
    device = next(model.parameters()).device
    idx = torch.tensor(list(features), dtype=torch.long, device=device)
    use_sae = sae is not None and len(features) > 0
    scale = None
    if use_sae:
        max_act = sae.max_activation[idx].float()
        scale = torch.where(torch.isfinite(max_act) & (max_act > 0), max_act, torch.ones_like(max_act))
    losses: list[float | None] = []
    peaks: list[list[float] | None] = []
    for start in range(0, len(answers), batch_size):
        ctx, ans = contexts[start : start + batch_size], answers[start : start + batch_size]
        rows = [list(c) + list(a) for c, a in zip(ctx, ans)]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for r, row in enumerate(rows):  # right-padded: positions 0..len-1 as in generation
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        # Logits only where some row predicts an answer token: positions first..last-1.
        first = min((len(c) for c, a in zip(ctx, ans) if a), default=1) - 1
        keep = torch.arange(max(first, 0), width, device=device)
        with torch.inference_mode():
            with capture(model, sae.cfg.hook_layer, sae.cfg.hook_site) if use_sae else _nullcontext() as store:
                logits = _forward_logits(model, ids.to(device), mask.to(device), keep)
            if use_sae:
                acts = sae.encode_features(store[0].to(sae.W_dec.dtype), idx) / scale  # [B, T, m]
            for r, (c, a) in enumerate(zip(ctx, ans)):
                if not a:
                    losses.append(None)
                    peaks.append(None)
                    continue
                lo, hi = len(c), len(c) + len(a)
                logp = torch.log_softmax(logits[r, lo - 1 - int(keep[0]) : hi - 1 - int(keep[0])].float(), dim=-1)
                target = torch.tensor(list(a), device=logp.device)
                losses.append(float(-logp.gather(1, target[:, None]).mean()))
                peaks.append(acts[r, lo:hi].amax(0).float().tolist() if use_sae else None)
    return losses, peaks


def _forward_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits [B, len(keep), V] at positions `keep` (a contiguous range); the full forward where
    the model takes no `logits_to_keep`."""
    try:
        return model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    except TypeError:
        return model(input_ids=ids, attention_mask=mask).logits[:, keep]


@dataclass(frozen=True)
class EvalTarget:
    """One thing to evaluate: a spec, how to judge its answers, and the system prompt of its steered rows."""

    label: str
    spec: SteeringSpec
    concept: Concept
    system_prompt: str | None = None

    @classmethod
    def from_preset(cls, preset: EvalPreset) -> "EvalTarget":
        concept = Concept.for_spec(preset.spec, preset.concept_words, preset.concept_features)
        return cls(preset.name, preset.spec, concept, preset.system_prompt)


class _Judge:
    """Concept words, features and the combined rule for one target's concept (module docstring)."""

    def __init__(self, sm: Any, concept: Concept, columns: dict[int, int]):
        self.concept = concept
        self.pattern = concept_word_pattern(concept.words)
        self.cols = [columns[i] for i in concept.features]
        self.known_max = sm.sae is not None and all(
            math.isfinite(float(sm.sae.max_activation[i])) for i in concept.features)

    def peak(self, peaks: list[float] | None) -> float | None:
        return max(peaks[c] for c in self.cols) if peaks is not None and self.cols else None

    def __call__(self, answer: _Answer, peaks: list[float] | None) -> tuple[bool | None, bool | None, bool | None]:
        words = has_concept_words(answer.text, self.pattern) if self.pattern is not None else None
        feats = None
        if self.concept.features:
            p = self.peak(peaks)  # None: an empty answer, which carries no concept
            feats = p is not None and (p >= self.concept.fire_fraction if self.known_max else p > 0)
        either = None if words is None and feats is None else bool(words) or bool(feats)
        return words, feats, either


def evaluate_targets(
    sm: Any,
    targets: Sequence[EvalTarget],
    prompts: Sequence[str] | None = None,
    settings: EvalSettings = EvalSettings(),
) -> list[EvalResult]:
    """Evaluate several targets on the same prompts against one shared baseline.

    Baseline rows use the plain prompt (no system prompt, no clamps); every
    answer is scored in that context. `settings.system_prompt` is ignored
    here: each target carries its own.
    """
    t0 = time.perf_counter()
    prompts = list(prompts) if prompts is not None else load_prompts()
    n_prompts = len(prompts)
    if settings.samples < 1:
        raise SteeringError(f"samples must be >= 1, got {settings.samples}", "samples")
    prompts = prompts * settings.samples  # row j of the expanded list is seeded seed + j
    features: list[int] = list(dict.fromkeys(i for t in targets for i in t.concept.features))
    if sm.sae is not None:
        for t in targets:
            t.spec.validate(sm.sae)
        for i in features:
            if not 0 <= i < sm.sae.d_sae:
                raise SteeringError(f"concept feature {i} is out of range (d_sae {sm.sae.d_sae})", "concept_features")
    n = len(prompts)
    base_ids = [sm.prompt_ids([{"role": "user", "content": p}]) for p in prompts]
    params = [SamplingParams(max_tokens=settings.max_tokens, temperature=settings.temperature,
                             top_p=settings.top_p, seed=settings.seed + j) for j in range(n)]
    requests = [SequenceRequest(base_ids[j], params[j], None) for j in range(n)]
    for t in targets:
        system = [{"role": "system", "content": t.system_prompt}] if t.system_prompt else []
        requests += [SequenceRequest(sm.prompt_ids(system + [{"role": "user", "content": prompts[j]}]) if system
                                     else base_ids[j], params[j], t.spec) for j in range(n)]
    answers = _generate(sm, requests, settings.batch_size)
    t_gen = time.perf_counter()
    losses, peaks = score_answers(sm, base_ids * (len(targets) + 1), [a.ids for a in answers], features,
                                  settings.score_batch_size)
    t_score = time.perf_counter()
    columns = {f: c for c, f in enumerate(features)}
    results: list[EvalResult] = []
    for s, t in enumerate(targets):
        judge = _Judge(sm, t.concept, columns)
        rows: list[AnswerRecord] = []
        judged, base_judged = [], []
        for j in range(n):
            k = n * (s + 1) + j
            judged.append(judge(answers[k], peaks[k]))
            base_judged.append(judge(answers[j], peaks[j]))
            rows.append(AnswerRecord(
                prompt=prompts[j], steered=answers[k].text, baseline=answers[j].text,
                steered_words=judged[-1][0], baseline_words=base_judged[-1][0],
                steered_peak=judge.peak(peaks[k]), baseline_peak=judge.peak(peaks[j]),
                steered_rep4=repeated_ngram_share(answers[k].text),
                baseline_rep4=repeated_ngram_share(answers[j].text),
                steered_loss=losses[k], baseline_loss=losses[j],
                steered_tokens=len(answers[k].ids), baseline_tokens=len(answers[j].ids)))
        loss, base_loss = mean(r.steered_loss for r in rows), mean(r.baseline_loss for r in rows)
        results.append(EvalResult(
            label=t.label, spec=spec_to_dict(t.spec), n_prompts=n_prompts, n_answers=n,
            concept_words=list(t.concept.words), concept_features=list(t.concept.features),
            concept_rule=t.concept.rule,
            concept_rate=rate(x[2] for x in judged), baseline_concept_rate=rate(x[2] for x in base_judged),
            word_rate=rate(x[0] for x in judged), baseline_word_rate=rate(x[0] for x in base_judged),
            feature_rate=rate(x[1] for x in judged), baseline_feature_rate=rate(x[1] for x in base_judged),
            repeated_4gram=mean(r.steered_rep4 for r in rows) or 0.0,
            baseline_repeated_4gram=mean(r.baseline_rep4 for r in rows) or 0.0,
            loss=loss, baseline_loss=base_loss,
            delta_loss=None if loss is None or base_loss is None else loss - base_loss,
            settings={**dataclasses.asdict(settings), "system_prompt": t.system_prompt,
                      "fire_fraction": t.concept.fire_fraction},
            seconds=0.0,
            examples=[{"prompt": r.prompt, "steered": r.steered, "baseline": r.baseline}
                      for r in rows[: settings.n_examples]],
            rows=rows))
    elapsed = time.perf_counter() - t0
    for r in results:
        r.seconds, r.generate_seconds, r.score_seconds = elapsed, t_gen - t0, t_score - t_gen
    return results


def evaluate_specs(
    sm: Any,
    specs: Sequence[SteeringSpec],
    concept: Concept,
    prompts: Sequence[str] | None = None,
    settings: EvalSettings = EvalSettings(),
    labels: Sequence[str] | None = None,
) -> list[EvalResult]:
    """Several specs judged by one concept, steered rows with settings.system_prompt (a sweep)."""
    labels = list(labels) if labels is not None else [f"spec {k}" for k in range(len(specs))]
    targets = [EvalTarget(label, spec, concept, settings.system_prompt) for label, spec in zip(labels, specs)]
    return evaluate_targets(sm, targets, prompts, settings)


def evaluate(sm: Any, spec: SteeringSpec, concept: Concept | None = None, prompts: Sequence[str] | None = None,
             settings: EvalSettings = EvalSettings(), label: str = "steered") -> EvalResult:
    """Evaluate one spec (concept: default the spec's own positive clamps, no words)."""
    concept = concept if concept is not None else Concept.for_spec(spec)
    return evaluate_specs(sm, [spec], concept, prompts, settings, [label])[0]


def evaluate_presets(sm: Any, presets: Sequence[EvalPreset], prompts: Sequence[str] | None = None,
                     settings: EvalSettings = EvalSettings()) -> list[EvalResult]:
    """Evaluate presets with their own concept words, concept features and system prompts (one baseline)."""
    return evaluate_targets(sm, [EvalTarget.from_preset(p) for p in presets], prompts, settings)


def evaluate_preset(sm: Any, preset: EvalPreset, prompts: Sequence[str] | None = None,
                    settings: EvalSettings = EvalSettings()) -> EvalResult:
    return evaluate_presets(sm, [preset], prompts, settings)[0]
