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

    word_rate       share of answers with a concept word (see `metrics`)
    feature_rate    share of answers with peak >= concept.fire_fraction
                    (> 0 where a max activation is unknown)
    concept_rate    the combined rule: words OR features when both are given,
                    else whichever is given; None when neither is
    repeated_4gram  mean over answers of the repeated 4-gram share (`metrics`)
    delta_loss      mean loss of the steered answers minus that of the
                    baselines, in nats (> 0: the plain model finds them less likely)
    prompted        with a compare_prompt: the same rates and delta loss for answers
                    to the prompts with that system prompt and no clamps (the
                    prompting baseline steering is held against)
    unchanged_rate  share of steered answers token for token equal to their
                    baseline (a conditional preset should leave what it does
                    not trigger on alone)
    triggered_rate  with monitors: share of steered answers where one crossed

and the same rates for the baselines. Concept features default to the spec's
own positive clamps ("does the plain model, reading the answer, see the
concept?"); a preset may name others in `concept_features`.

Where the work runs is a `Runner`: `forward(fn, *args)` runs model forwards
(the answers' scoring, in chunks of `score_batch_size` rows) and
`generate(requests)` the answers. `INLINE` runs both on the calling thread
(`generate_batch`, its own scheduler); `engine_runner(engine)` sends the
answers to a running engine as background rows of its continuous batch (after
every client's row, in at most half its slots) and the
forwards to its compute thread between steps, so an evaluation inside a
server (auto-steer's probe) shares the model instead of taking it.

Targets and settings: `targets`; reading answers back: `scoring`; what is
reported: `results`; prompts: `prompts`; presets: `steering.presets`.
Command: `python -m steering eval-steering ...` (steering.cli.evaluate).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, TypeVar

from steering.engine.generation import generate_batch
from steering.engine.requests import SequenceRequest
from steering.engine.sampling import SamplingParams
from steering.engine.worker import Engine
from steering.errors import SteeringError
from steering.evaluation.metrics import mean, rate, repeated_ngram_share
from steering.evaluation.prompts import load_prompts
from steering.evaluation.results import AnswerRecord, EvalResult
from steering.evaluation.scoring import Answer, ContextCache, Judge, score_answers
from steering.evaluation.targets import Concept, EvalSettings, EvalTarget
from steering.interventions import SteeringSpec
from steering.presets import Preset

if TYPE_CHECKING:
    from steering.steered_model import SteeredModel

T = TypeVar("T")


def _collect(steps: Iterable[list], n: int, offset: int = 0, into: list | None = None) -> list[list]:
    """[text, ids, crossed] per request from a stream of event lists (`TokenEvent.index` + offset)."""
    out = into if into is not None else [["", [], False] for _ in range(n)]
    for events in steps:
        for e in events:
            row = out[offset + e.index]
            row[0] += e.text
            if e.token_id is not None:
                row[1].append(e.token_id)
            row[2] |= bool(e.monitor_events)
    return out


def _generate(sm: "SteeredModel", requests: list[SequenceRequest], batch_size: int) -> list[Answer]:
    rows: list[list] = [["", [], False] for _ in requests]
    model, tokenizer = sm.loaded.model, sm.loaded.tokenizer
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        _collect(generate_batch(model, tokenizer, sm.sae, chunk), len(chunk), start, rows)
    return [Answer(t, tuple(i), c) for t, i, c in rows]


@dataclass(frozen=True)
class Runner:
    """Where an evaluation's model work runs (see the module docstring)."""

    forward: Callable[..., Any] | None = None  # forward(fn, *args) -> fn(*args); None: on this thread
    generate: Callable[[list[SequenceRequest]], list[Answer]] | None = None  # None: generate_batch here

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        return self.forward(fn, *args) if self.forward is not None else fn(*args)


INLINE = Runner()


def engine_runner(engine: Engine) -> Runner:
    """Answers as rows of `engine`'s batch, forwards on its compute thread: for a caller on another thread
    (never the engine's own, which would wait for itself)."""

    def generate(requests: list[SequenceRequest]) -> list[Answer]:
        background = [dataclasses.replace(r, background=True) for r in requests]  # behind clients' rows
        rows = _collect(engine.submit(background), len(requests))
        return [Answer(t, tuple(i), c) for t, i, c in rows]

    return Runner(lambda fn, *args: engine.call(fn, *args).result(), generate)


def generate_answers(sm: "SteeredModel", runner: Runner, requests: list[SequenceRequest],
                     batch_size: int) -> list[Answer]:
    """The requests' answers, generated where `runner` says (`generate_batch` here for INLINE)."""
    return runner.generate(requests) if runner.generate is not None else _generate(sm, requests, batch_size)


def score_in_chunks(sm: "SteeredModel", runner: Runner, contexts: Sequence, answers: Sequence,
                    features: Sequence[int], batch_size: int,
                    cache: ContextCache | None = None) -> tuple[list, list]:
    """score_answers in chunks of `batch_size` rows, each one `runner` call (short calls between steps).

    Rows are taken context by context (every target answers the same prompts), and each context's
    forward is kept into the next call (`cache`, by default one for this call), so it is computed once
    per evaluation."""
    order = sorted(range(len(answers)), key=lambda r: (tuple(contexts[r]), r))
    losses: list = [None] * len(answers)
    peaks: list = [None] * len(answers)
    cache = cache if cache is not None else ContextCache()
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        lo, pe = runner.run(score_answers, sm, [contexts[r] for r in chunk], [answers[r] for r in chunk],
                            features, batch_size, cache)
        for r, loss, peak in zip(chunk, lo, pe):
            losses[r], peaks[r] = loss, peak
    return losses, peaks


def evaluate_targets(
    sm: "SteeredModel",
    targets: Sequence[EvalTarget],
    prompts: Sequence[str] | None = None,
    settings: EvalSettings = EvalSettings(),
    runner: Runner = INLINE,
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

    def rows_for(system_prompt: str | None, spec: SteeringSpec | None, monitors: tuple = ()) -> list[SequenceRequest]:
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return [SequenceRequest(sm.prompt_ids(system + [{"role": "user", "content": prompts[j]}]) if system
                                else base_ids[j], params[j], spec, None, monitors) for j in range(n)]

    for t in targets:
        requests += rows_for(t.system_prompt, t.spec, t.monitors)
    # The prompting baselines: the target's compare_prompt as the system prompt, no clamps.
    compared = [s for s, t in enumerate(targets) if t.compare_prompt]
    for s in compared:
        requests += rows_for(targets[s].compare_prompt, None)
    prompted_at = {s: n * (len(targets) + 1 + k) for k, s in enumerate(compared)}
    answers = generate_answers(sm, runner, requests, settings.batch_size)
    t_gen = time.perf_counter()
    losses, peaks = score_in_chunks(sm, runner, base_ids * (len(targets) + 1 + len(compared)), [a.ids for a in answers],
                           features, settings.score_batch_size)
    t_score = time.perf_counter()
    columns = {f: c for c, f in enumerate(features)}
    results: list[EvalResult] = []
    for s, t in enumerate(targets):
        judge = Judge(sm, t.concept, columns)
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
        prompted = None
        if s in prompted_at:
            at = range(prompted_at[s], prompted_at[s] + n)
            marks = [judge(answers[k], peaks[k]) for k in at]
            p_loss = mean(losses[k] for k in at)
            prompted = {"system_prompt": t.compare_prompt, "concept_rate": rate(x[2] for x in marks),
                        "word_rate": rate(x[0] for x in marks), "feature_rate": rate(x[1] for x in marks),
                        "repeated_4gram": mean(repeated_ngram_share(answers[k].text) for k in at) or 0.0,
                        "delta_loss": None if p_loss is None or base_loss is None else p_loss - base_loss,
                        "examples": [answers[k].text for k in at][: settings.n_examples]}
        results.append(EvalResult(
            label=t.label, spec=t.spec.to_dict(), n_prompts=n_prompts, n_answers=n,
            concept_words=list(t.concept.words), concept_features=list(t.concept.features),
            concept_rule=t.concept.rule,
            concept_rate=rate(x[2] for x in judged), baseline_concept_rate=rate(x[2] for x in base_judged),
            word_rate=rate(x[0] for x in judged), baseline_word_rate=rate(x[0] for x in base_judged),
            feature_rate=rate(x[1] for x in judged), baseline_feature_rate=rate(x[1] for x in base_judged),
            repeated_4gram=mean(r.steered_rep4 for r in rows) or 0.0,
            baseline_repeated_4gram=mean(r.baseline_rep4 for r in rows) or 0.0,
            loss=loss, baseline_loss=base_loss,
            delta_loss=None if loss is None or base_loss is None else loss - base_loss,
            unchanged_rate=rate(answers[n * (s + 1) + j].ids == answers[j].ids for j in range(n)),
            triggered_rate=rate(answers[n * (s + 1) + j].crossed for j in range(n)) if t.monitors else None,
            goal=t.goal, prompted=prompted,
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
    sm: "SteeredModel",
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


def evaluate(sm: "SteeredModel", spec: SteeringSpec, concept: Concept | None = None, prompts: Sequence[str] | None = None,
             settings: EvalSettings = EvalSettings(), label: str = "steered") -> EvalResult:
    """Evaluate one spec (concept: default the spec's own positive clamps, no words)."""
    concept = concept if concept is not None else Concept.for_spec(spec)
    return evaluate_specs(sm, [spec], concept, prompts, settings, [label])[0]


def evaluate_presets(sm: "SteeredModel", presets: Sequence[Preset], prompts: Sequence[str] | None = None,
                     settings: EvalSettings = EvalSettings()) -> list[EvalResult]:
    """Evaluate presets with their own concept words, concept features and system prompts (one baseline)."""
    return evaluate_targets(sm, [EvalTarget.from_preset(p) for p in presets], prompts, settings)


def evaluate_preset(sm: "SteeredModel", preset: Preset, prompts: Sequence[str] | None = None,
                    settings: EvalSettings = EvalSettings()) -> EvalResult:
    return evaluate_presets(sm, [preset], prompts, settings)[0]
