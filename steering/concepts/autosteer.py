"""Auto-steer: a SteeringSpec for a concept given as text.

    steerer = AutoSteerer(sm)                   # one per model and SAE; it remembers concepts
    result = steerer.steer("dogs", strength=1.0)
    sm.chat(messages, result.spec)              # result.features says what was used

Two methods. `direction` (the default): the concept's difference in means
over DIRECTION_FEATURES features, added for the prompt and the first
DEFAULT_WINDOW generated tokens at a calibrated push (`steering.concepts.direction`);
no generation is needed to pick it. `feature`: one feature (two with
`max_features` 2), picked by a probe, as follows.

Candidates: the SEARCH_CANDIDATES best of `concepts.find_concept_features`
(specificity x logit effect) plus `extra` features (by default the
LABEL_CANDIDATES best label matches of the model's catalogue, `sm.catalogue`). The
search alone is a weak guide at layer 15: its top features are often token
detectors that do not steer, and on the six shipped concepts auto-steer by
search score turned 0-28% of answers to the concept by words (README,
"Auto-steer"). So
each candidate is probed (`steering.concepts.probe`: a few short seeded
answers with the candidate clamped, judged by concept words and by the
feature firing) and the one that lifts the concept rate most over the plain
answers wins (ties: the smaller delta loss); a candidate whose judge (the
concept words or its own firing) marks more than a quarter of the plain
answers is too broad to judge and is passed over. If none lifts the concept, the first judged candidate among
the label matches (in `extra`'s order), then the search's order, is used
alone; with `probe=None`, the search's top. Value and window:

    value_i = m_i * strength   (unit `max`, mode `clamp`, all positions,
                                generated_limit DEFAULT_WINDOW = 12)
    m_i = PUSH_FRACTION * scale / (max_i * |W_dec[i]|), clipped to MULTIPLIER_RANGE

so every feature moves the hook site's vector by the same share of its
typical norm (`calibrated_multiplier`; scale: the median residual norm over
the unrelated bank's texts in the SAE's units, where W_dec's rows live, read
once per SAE). PUSH_FRACTION is where the
shipped single-feature presets, chosen on the selection half of the neutral
prompts, sit (docs/research/steering.md); a fixed multiple of max pushed
features with long decoder rows or high activations too hard and others too
little. Without a scale (no bank read) the multiplier is DEFAULT_MULTIPLIER.
The probe runs each candidate at its own value and the window: a short nudge
costs less fluency than a clamp held over the whole answer for the same
concept rate (presets/*.json notes). A second feature is added only when
`max_features` > 1 and its probe lift (or, unprobed, its score) is at least
SECOND_FEATURE_RATIO of the first's, and then each one's value is halved
(two features at full strength broke every concept in the prototype probe).

An `AutoSteerer` keeps each concept's search and probe (keyed by the concept
lowercased with whitespace collapsed, and the extra features) for the
MAX_CACHED_CONCEPTS most recently used concepts; `strength` is applied
after the cache. It belongs to one SteeredModel: whoever holds the model
(the server's state, a command) holds its steerer, and nothing is global.
Search and probe run forwards and generation on the shared model, each forward
a short call of a `Runner` (inline by default; a server's compute thread
between decoding steps with `engine_runner`), the probe's answers as rows of
its batch; `is_cached` says when a call will run none. `auto_steer(sm, ...)` is one uncached call.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from steering.concepts.direction import (DIRECTION_FEATURES, Direction, concept_direction, direction_alpha,
                                         direction_result)
from steering.concepts.probe import (PlainAnswers, ProbeResult, ProbeSettings, judged, plain_answers, probe_specs,
                                     ranked_probes)
from steering.concepts.results import AutoSteerResult, UsedFeature
from steering.concepts.search import ConceptCandidate, TextStats, find_concept_features, neutral_bank_stats
from steering.errors import SteeringError
from steering.evaluation.run import INLINE, Runner
from steering.interventions import FeatureClamp, SteeringSpec

if TYPE_CHECKING:
    from steering.steered_model import SteeredModel

DEFAULT_MULTIPLIER = 1.75  # without a residual scale (no neutral bank read)
PUSH_FRACTION = 0.362
MULTIPLIER_RANGE = (0.5, 3.0)
DEFAULT_WINDOW = 12
DEFAULT_PROBE = ProbeSettings()
SEARCH_CANDIDATES = 4
SEARCH_POOL = 32
LABEL_CANDIDATES = 4
MAX_STRENGTH = 5.0
SECOND_FEATURE_RATIO = 0.8
MAX_CONCEPT_CHARS = 100
# How auto-steer steers: the concept's direction over several features, or one probed feature.
METHODS = ("direction", "feature")
DEFAULT_METHOD = "direction"

# An AutoSteerer keeps the MAX_CACHED_CONCEPTS most recently used concepts (least recently used dropped first).
MAX_CACHED_CONCEPTS = 256


def _check_method(method: Any) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise SteeringError(f"steering.method must be one of {', '.join(METHODS)}", "steering.method")
    return method


def _key(concept: str) -> str:
    return " ".join(concept.lower().split())


def _direction_key(concept: str) -> tuple[str, str]:
    return "direction", _key(concept)


def _check(concept: Any, strength: Any) -> tuple[str, float]:
    if not isinstance(concept, str) or not concept.strip():
        raise SteeringError("steering.concept must be a non-empty string", "steering.concept")
    if len(concept) > MAX_CONCEPT_CHARS:
        raise SteeringError(f"steering.concept is longer than {MAX_CONCEPT_CHARS} characters", "steering.concept")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) \
            or not 0 < strength <= MAX_STRENGTH:
        raise SteeringError(f"steering.strength must be a number in (0, {MAX_STRENGTH:g}]", "steering.strength")
    return concept.strip(), float(strength)


@dataclass(frozen=True)
class _Choice:
    """A concept's cached search and probe (independent of strength)."""

    candidates: tuple[ConceptCandidate, ...]
    probes: tuple[ProbeResult, ...]
    labelled: tuple[int, ...] = ()  # the `extra` (label-matched) features, best match first
    scale: float | None = None  # the residual scale the values are calibrated on (`calibrated_multiplier`)


def concept_candidates(sm: "SteeredModel", concept: str, extra: Sequence[int] = (), neutral: TextStats | None = None,
                       runner: Runner = INLINE) -> list[ConceptCandidate]:
    """The probe pool: the search's SEARCH_CANDIDATES best by score, then the `extra` features (e.g. a
    catalogue's label matches) in the search's order, each once. `neutral`, `runner`: as for
    `find_concept_features`."""
    extra_set = {int(i) for i in extra}
    found = find_concept_features(sm, concept, limit=SEARCH_POOL + len(extra_set), pool=SEARCH_POOL,
                                  extra=sorted(extra_set), neutral=neutral, runner=runner)
    return found[:SEARCH_CANDIDATES] + [c for c in found[SEARCH_CANDIDATES:] if c.index in extra_set]


def label_matches(sm: "SteeredModel", concept: str, limit: int = LABEL_CANDIDATES) -> list[int]:
    """Indices of the model's catalogue's best label matches for the concept (none without a catalogue)."""
    return [f.index for f in sm.catalogue.search(concept, limit)] if sm.catalogue is not None else []


class AutoSteerer:
    """Auto-steer on one SteeredModel, remembering each concept's search and probe (module docstring).

    `probe`: the probe's budget, None to pick by the search's score alone (no
    generation). The caches (choices, and each concept's catalogue label
    matches) are guarded by a lock, so `is_cached` and a cached `steer` may run
    on any thread and cost a dictionary look-up. An uncached `steer` runs
    forwards with hooks on the shared model and generates the probe's answers:
    by default on the calling thread (which must have the model to itself);
    with `runner=engine_runner(engine)` from another thread, as short calls on
    the engine's compute thread and rows of its batch, alongside other work
    (`steering.evaluation.run.Runner`).
    """

    def __init__(self, sm: "SteeredModel", probe: ProbeSettings | None = DEFAULT_PROBE,
                 max_cached: int | None = None, method: str = DEFAULT_METHOD):
        self.sm = sm
        self.method = _check_method(method)
        self.probe = probe
        self.max_cached = max_cached if max_cached is not None else MAX_CACHED_CONCEPTS
        self._cache: OrderedDict[tuple[Any, ...], _Choice] = OrderedDict()
        self._labels: OrderedDict[str, tuple[int, ...]] = OrderedDict()  # concept key -> its label matches
        self._neutral: TextStats | None = None  # the unrelated bank's statistics on this SAE (`prepare`)
        self._plain: PlainAnswers | None = None  # the probe's plain answers, the same for every concept (`prepare`)
        self._lock = threading.Lock()

    def prepare(self, runner: Runner = INLINE) -> None:
        """Read the unrelated text bank once (`neutral_bank_stats`), so that a new concept's search runs
        only its own few texts, and, when the steerer's method is `feature`, make the probe's plain
        answers (`plain_answers`), which no concept changes; done by the first uncached `steer` if not
        before (a server does it at start-up)."""
        if self.sm.sae is None:
            return
        if self._neutral is None:
            stats = neutral_bank_stats(self.sm, runner)
            with self._lock:
                self._neutral = self._neutral or stats
        if self.method == "feature":
            self._plain_answers(runner)

    def _plain_answers(self, runner: Runner = INLINE) -> PlainAnswers | None:
        if self.probe is not None and self._plain is None:
            plain = plain_answers(self.sm, self.probe, runner)
            with self._lock:
                self._plain = self._plain or plain
        return self._plain

    def _extra(self, concept: str, extra: Sequence[int] | None, compute: bool = True) -> tuple[int, ...] | None:
        """The extra candidates: `extra`, else the catalogue's label matches (remembered: a catalogue search
        takes a few hundred ms on the shipped one); None when not known and not `compute`."""
        if extra is not None:
            return tuple(dict.fromkeys(int(i) for i in extra))
        key = _key(concept)
        with self._lock:
            known = self._labels.get(key)
            if known is not None:
                self._labels.move_to_end(key)  # used as the choices are: the same least recently used order
        if known is not None or not compute:
            return known
        # Text matching over the catalogue's arrays, no model: on the calling thread, not the compute thread.
        found = tuple(dict.fromkeys(label_matches(self.sm, concept)))
        with self._lock:
            self._labels[key] = found
            while len(self._labels) > self.max_cached:
                self._labels.popitem(last=False)
        return found

    @staticmethod
    def _key(concept: str, extra: Sequence[int]) -> tuple[Any, ...]:
        return _key(concept), tuple(sorted(set(extra)))

    def is_cached(self, concept: str, extra: Sequence[int] | None = None, method: str | None = None) -> bool:
        """True when `steer(concept, ..., extra=extra, method=method)` will run no forward pass."""
        if self.sm.sae is None or not isinstance(concept, str):
            return False
        if (method or self.method) == "direction":
            with self._lock:
                return _direction_key(concept) in self._cache
        found = self._extra(concept, extra, compute=False)
        if found is None:  # its label matches are not known yet, so neither is its choice
            return False
        with self._lock:
            return self._key(concept, found) in self._cache

    def steer(self, concept: str, strength: float = 1.0, max_features: int = 1,
              extra: Sequence[int] | None = None, runner: Runner = INLINE,
              method: str | None = None) -> AutoSteerResult:
        """Pick features and values for `concept`; raises SteeringError (param `steering.*`) when it cannot.

        `method`: `direction` (the concept's direction over DIRECTION_FEATURES features) or `feature` (one
        probed feature, two with `max_features` 2); default the steerer's. `extra` (method `feature`):
        feature indices that join the candidates (default: the catalogue's LABEL_CANDIDATES best label
        matches)."""
        concept, strength = _check(concept, strength)
        method = _check_method(method or self.method)
        if self.sm.sae is None:
            raise SteeringError("this server has no SAE loaded; steering is unavailable", "steering")
        if method == "direction":
            if max_features != 1:
                raise SteeringError("max_features applies to method `feature` (the direction has its own "
                                    f"{DIRECTION_FEATURES} features)", "max_features")
            return direction_result(self.sm, concept, strength, self._direction(concept, runner), DEFAULT_WINDOW)
        choice = self._choice(concept, self._extra(concept, extra), runner)
        return _result(self.sm, concept, strength, max_features, choice)

    def _remember(self, key: tuple[Any, ...], choice: "_Choice | Direction") -> None:
        with self._lock:
            self._cache[key] = choice
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)

    def _cached(self, key: tuple[Any, ...]) -> "_Choice | Direction | None":
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
            return cached

    def _direction(self, concept: str, runner: Runner = INLINE) -> Direction:
        key = _direction_key(concept)
        cached = self._cached(key)
        if isinstance(cached, Direction):
            return cached
        self.prepare(runner)
        found = concept_direction(self.sm, concept, self._neutral, runner)
        scale = residual_scale(self._neutral)
        direction = Direction(tuple(c for c, _ in found), tuple(w for _, w in found), scale,
                              direction_alpha(self.sm, found, scale))
        self._remember(key, direction)
        return direction

    def _choice(self, concept: str, extra: tuple[int, ...], runner: Runner = INLINE) -> "_Choice":
        key = self._key(concept, extra)
        cached = self._cached(key)
        if isinstance(cached, _Choice):
            return cached
        sm = self.sm
        self.prepare(runner)
        candidates = tuple(concept_candidates(sm, concept, extra, neutral=self._neutral, runner=runner))
        scale = residual_scale(self._neutral)
        probes: tuple[ProbeResult, ...] = ()
        if self.probe is not None and candidates:
            specs = [(c.index, _spec(sm, [c], [calibrated_multiplier(sm, c, scale)])[1]) for c in candidates]
            probes = tuple(probe_specs(sm, concept, specs, self.probe, runner, plain=self._plain_answers(runner)))
        choice = _Choice(candidates, probes, extra, scale)
        self._remember(key, choice)
        return choice


def _use(sm: "SteeredModel", c: ConceptCandidate, value: float) -> UsedFeature:
    """Clamp in `max` units; without a known max activation, in raw units of the largest seen in the search."""
    if math.isfinite(float(sm.sae.max_activation[c.index])):
        return UsedFeature(c.index, value, "clamp", "max", c.score, c.specificity, c.logit_rank, c.promoted_tokens)
    return UsedFeature(c.index, value * c.max_activation, "clamp", "raw", c.score, c.specificity, c.logit_rank,
                       c.promoted_tokens)


def residual_scale(neutral: "TextStats | None") -> float | None:
    """The median over the unrelated bank's texts of their median residual norm at the hook site, in the SAE's
    units (`TextStats.resid_norm`; None unread)."""
    if neutral is None or neutral.resid_norm.numel() == 0:
        return None
    return float(neutral.resid_norm.median())


def calibrated_multiplier(sm: "SteeredModel", c: ConceptCandidate, scale: float | None) -> float:
    """The clamp value, in multiples of feature i's max activation, that pushes the residual by PUSH_FRACTION
    of its typical norm:

        m_i = PUSH_FRACTION * scale / (max_i * |W_dec[i]|),   clipped to MULTIPLIER_RANGE

    (max_i: the catalogue's max activation, else the largest seen in the search). A clamp to m x max moves
    the hook site's vector by up to m * max_i * |W_dec[i]|, so features whose decoder rows are long or whose
    activations run high get lower multipliers. DEFAULT_MULTIPLIER without a scale.
    """
    if scale is None:
        return DEFAULT_MULTIPLIER
    mx = float(sm.sae.max_activation[c.index])
    mx = mx if math.isfinite(mx) and mx > 0 else float(c.max_activation)
    push = mx * float(sm.sae.W_dec[c.index].detach().float().norm())
    if not push > 0:
        return DEFAULT_MULTIPLIER
    low, high = MULTIPLIER_RANGE
    return round(min(high, max(low, PUSH_FRACTION * scale / push)), 3)


def _spec(sm: "SteeredModel", chosen: Sequence[ConceptCandidate],
          values: Sequence[float]) -> tuple[tuple[UsedFeature, ...], SteeringSpec]:
    """Clamps of `chosen`, feature k at values[k] x its max, for the first DEFAULT_WINDOW generated tokens."""
    used = tuple(_use(sm, c, v) for c, v in zip(chosen, values))
    spec = SteeringSpec(tuple(FeatureClamp(u.index, u.value, u.mode, u.unit) for u in used), "all", DEFAULT_WINDOW)
    return used, spec


def _pick(choice: _Choice, max_features: int) -> tuple[list[ConceptCandidate], ProbeResult | None]:
    """The probe's best judged lift; probed with no lift, a judged label match, else the search's order;
    unprobed, the search's score."""
    by_index = {c.index: c for c in choice.candidates}
    ranked = ranked_probes(choice.probes)
    if ranked:
        best = ranked[0]
        chosen = [by_index[best.index]]
        chosen += [by_index[r.index] for r in ranked[1:max_features] if r.lift >= SECOND_FEATURE_RATIO * best.lift]
        return chosen, best
    if not choice.probes:  # unprobed: the search's order
        top = choice.candidates[0]
        return [top] + [c for c in choice.candidates[1:max_features]
                        if c.score >= SECOND_FEATURE_RATIO * top.score], None
    # Probed and nothing lifted: a label match (named for the concept) before the search's order,
    # skipping candidates the probe found too broad to judge.
    broad = {r.index for r in choice.probes if not judged(r)}
    order = [by_index[i] for i in choice.labelled if i in by_index] + list(choice.candidates)
    fallback = next((c for c in order if c.index not in broad), choice.candidates[0])
    return [fallback], None


def auto_steer(sm: "SteeredModel", concept: str, strength: float = 1.0, max_features: int = 1,
               extra: Sequence[int] | None = None, probe: ProbeSettings | None = DEFAULT_PROBE,
               method: str = DEFAULT_METHOD) -> AutoSteerResult:
    """One uncached `AutoSteerer(sm, probe, method=method).steer(concept, strength, max_features, extra)`."""
    return AutoSteerer(sm, probe, method=method).steer(concept, strength, max_features, extra)


def _result(sm: "SteeredModel", concept: str, strength: float, max_features: int, choice: _Choice) -> AutoSteerResult:
    """The spec and its rationale for a concept's (cached) search and probe at this strength."""
    if not choice.candidates:
        raise SteeringError(f"no feature of this SAE fires more on text about {concept!r} than on unrelated text",
                            "steering.concept")
    chosen, best = _pick(choice, max_features)
    multipliers = [calibrated_multiplier(sm, c, choice.scale) for c in chosen]
    values = [m * strength / len(chosen) for m in multipliers]
    used, spec = _spec(sm, chosen, values)
    spec.validate(sm.sae)
    top = chosen[0]
    how = (f"calibrated: a push of {100 * PUSH_FRACTION:g}% of the residual's typical norm {choice.scale:.3g}"
           if choice.scale is not None else "fixed")
    clamp = (f"clamped to {values[0]:.3g} x max activation ({multipliers[0]:.3g}, {how}, x strength {strength:g}"
             + (f", split over {len(chosen)} features" if len(chosen) > 1 else "")
             + f") for the first {DEFAULT_WINDOW} generated tokens")
    search = (f"specificity {top.specificity:.3f} (fires on {100 * top.concept_fire_rate:.0f}% of texts about "
              f"{concept!r}, {100 * top.neutral_fire_rate:.0f}% of unrelated ones), concept token rank "
              f"{top.logit_rank} among promoted tokens")
    if best is not None:
        n = best.n_answers
        dl = "n/a" if best.delta_loss is None else f"{best.delta_loss:+.2f} nats"
        why = (f"the best of {len(choice.probes)} candidates in a probe ({n} short answers each): "
               f"{round(best.concept_rate * n)}/{n} answers carried the concept, {round(best.baseline_rate * n)}/{n} "
               f"plain ones, delta loss {dl}; search: {search}")
    elif choice.probes:
        why = (f"no candidate lifted the concept in the probe, so the best label match the probe could judge "
               f"(else the search's top): {search}")
    else:
        why = search
    rationale = f"feature {top.index}: {why}; {clamp}"
    return AutoSteerResult(concept, strength, spec, used, rationale, choice.candidates, choice.probes)
