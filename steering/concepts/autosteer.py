"""Auto-steer: a SteeringSpec for a concept given as text.

    result = auto_steer(sm, "dogs", strength=1.0)
    sm.chat(messages, result.spec)          # result.features says what was used

Candidates: the SEARCH_CANDIDATES best of `concepts.find_concept_features`
(specificity x logit effect) plus `extra` features (a catalogue's
LABEL_CANDIDATES best label matches, which servers and CLIs pass). The
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

    value = DEFAULT_MULTIPLIER * strength   (unit `max`, mode `clamp`,
            all positions, generated_limit DEFAULT_WINDOW)

DEFAULT_MULTIPLIER = 1.75 for the first DEFAULT_WINDOW = 12 tokens follows
the shipped presets, whose single-feature knees with a 12-token window were
1.55x (mountains) and 1.7x (cooking): a short nudge costs less fluency than a
clamp held over the whole answer for the same concept rate (presets/*.json
notes); the probe runs at this value and window. A second feature is added
only when `max_features` > 1 and its probe lift (or, unprobed, its score) is
at least SECOND_FEATURE_RATIO of the first's, and then the multiplier is
split between the two (two features at full strength broke every concept in
the prototype probe).

Search and probe results are cached per SAE and per (concept lowercased
with whitespace collapsed, extra features, probe settings) in memory, in a
WeakKeyDictionary keyed by the SAE module, so a new SAE never sees another's
features, and bounded (the MAX_CACHED_CONCEPTS most recently used per SAE); `strength` is applied after the cache. Search and probe run
forwards and generation on the shared model: a server must run them where it
runs feature search (holding `api.gate` exclusively), not beside generation;
`is_cached` says when a call will run none.

CLI: `python -m steering concept-search CONCEPT [--limit N] [--try PROMPT] [--json]`
prints the ranked candidates with both scores, with the catalogue's label
and top context when the SAE ships a catalogue (whose text matches also join
the candidate pool), and with --try an auto-steered answer beside the
unsteered one.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

from steering.concepts.probe import ProbeResult, ProbeSettings, judged, probe_specs, ranked_probes
from steering.concepts.search import ConceptCandidate, find_concept_features
from steering.interventions import FeatureClamp, SteeringError, SteeringSpec

DEFAULT_MULTIPLIER = 1.75
DEFAULT_WINDOW = 12
DEFAULT_PROBE = ProbeSettings()
SEARCH_CANDIDATES = 4
SEARCH_POOL = 32
LABEL_CANDIDATES = 4
MAX_STRENGTH = 5.0
SECOND_FEATURE_RATIO = 0.8
MAX_CONCEPT_CHARS = 100

# Per SAE, the MAX_CACHED_CONCEPTS most recently used concepts (least recently used dropped first).
MAX_CACHED_CONCEPTS = 256
_CACHE: "weakref.WeakKeyDictionary[Any, OrderedDict[tuple[Any, ...], _Choice]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


@dataclass(frozen=True)
class UsedFeature:
    index: int
    value: float
    mode: str
    unit: str
    score: float
    specificity: float
    logit_rank: int
    promoted_tokens: tuple[str, ...]


@dataclass(frozen=True)
class AutoSteerResult:
    concept: str
    strength: float
    spec: SteeringSpec
    features: tuple[UsedFeature, ...]
    rationale: str
    candidates: tuple[ConceptCandidate, ...] = field(default=(), repr=False)
    probes: tuple[ProbeResult, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; `features` can be pasted into a preset's `features`."""
        return {
            "concept": self.concept,
            "strength": self.strength,
            "positions": self.spec.positions,
            "generated_limit": self.spec.generated_limit,
            "features": [
                {"index": f.index, "value": f.value, "mode": f.mode, "unit": f.unit, "score": f.score,
                 "specificity": f.specificity, "logit_rank": f.logit_rank, "promoted_tokens": list(f.promoted_tokens)}
                for f in self.features
            ],
            "rationale": self.rationale,
            "probe": [p.to_dict() for p in self.probes],
        }


def _key(concept: str) -> str:
    return " ".join(concept.lower().split())


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


def _cache_key(concept: str, extra: Sequence[int], probe: ProbeSettings | None) -> tuple[Any, ...]:
    return _key(concept), tuple(sorted({int(i) for i in extra})), probe


def concept_candidates(sm: Any, concept: str, extra: Sequence[int] = ()) -> list[ConceptCandidate]:
    """The probe pool: the search's SEARCH_CANDIDATES best by score, then the `extra` features (e.g. a
    catalogue's label matches) in the search's order, each once."""
    extra_set = {int(i) for i in extra}
    found = find_concept_features(sm, concept, limit=SEARCH_POOL + len(extra_set), pool=SEARCH_POOL,
                                  extra=sorted(extra_set))
    return found[:SEARCH_CANDIDATES] + [c for c in found[SEARCH_CANDIDATES:] if c.index in extra_set]


def _choice(sm: Any, concept: str, extra: Sequence[int], probe: ProbeSettings | None) -> _Choice:
    if sm.sae is None:
        raise SteeringError("this server has no SAE loaded; steering is unavailable", "steering")
    key = _cache_key(concept, extra, probe)
    with _LOCK:
        cached = _CACHE.get(sm.sae, {}).get(key)
        if cached is not None:
            _CACHE[sm.sae].move_to_end(key)
    if cached is not None:
        return cached
    candidates = tuple(concept_candidates(sm, concept, extra))
    probes: tuple[ProbeResult, ...] = ()
    if probe is not None and candidates:
        specs = [(c.index, _spec(sm, [c], DEFAULT_MULTIPLIER)[1]) for c in candidates]
        probes = tuple(probe_specs(sm, concept, specs, probe))
    choice = _Choice(candidates, probes, tuple(dict.fromkeys(int(i) for i in extra)))
    with _LOCK:
        per_sae = _CACHE.setdefault(sm.sae, OrderedDict())
        per_sae[key] = choice
        per_sae.move_to_end(key)
        while len(per_sae) > MAX_CACHED_CONCEPTS:
            per_sae.popitem(last=False)
    return choice


def is_cached(sm: Any, concept: str, extra: Sequence[int] = (), probe: ProbeSettings | None = DEFAULT_PROBE) -> bool:
    """True when `auto_steer(sm, concept, ..., extra=extra, probe=probe)` will run no forward pass."""
    with _LOCK:
        return sm.sae is not None and _cache_key(concept, extra, probe) in _CACHE.get(sm.sae, {})


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


def _use(sm: Any, c: ConceptCandidate, value: float) -> UsedFeature:
    """Clamp in `max` units; without a known max activation, in raw units of the largest seen in the search."""
    if math.isfinite(float(sm.sae.max_activation[c.index])):
        return UsedFeature(c.index, value, "clamp", "max", c.score, c.specificity, c.logit_rank, c.promoted_tokens)
    return UsedFeature(c.index, value * c.max_activation, "clamp", "raw", c.score, c.specificity, c.logit_rank,
                       c.promoted_tokens)


def _spec(sm: Any, chosen: Sequence[ConceptCandidate], value: float) -> tuple[tuple[UsedFeature, ...], SteeringSpec]:
    used = tuple(_use(sm, c, value) for c in chosen)
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


def auto_steer(sm: Any, concept: str, strength: float = 1.0, max_features: int = 1, extra: Sequence[int] = (),
               probe: ProbeSettings | None = DEFAULT_PROBE) -> AutoSteerResult:
    """Pick features and values for `concept`; raises SteeringError (param `steering.*`) when it cannot.

    `extra`: feature indices that join the candidates (a catalogue's label
    matches); `probe`: the probe's budget, None to pick by the search's score
    alone (no generation)."""
    concept, strength = _check(concept, strength)
    choice = _choice(sm, concept, extra, probe)
    if not choice.candidates:
        raise SteeringError(f"no feature of this SAE fires more on text about {concept!r} than on unrelated text",
                            "steering.concept")
    chosen, best = _pick(choice, max_features)
    value = DEFAULT_MULTIPLIER * strength / len(chosen)
    used, spec = _spec(sm, chosen, value)
    spec.validate(sm.sae)
    top = chosen[0]
    clamp = (f"clamped to {value:g} x max activation ({DEFAULT_MULTIPLIER:g} x strength {strength:g}"
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


# --------------------------------------------------------------------- CLI
def _search_command(args: Any) -> int:
    import json
    import sys

    from steering.concepts.search import find_concept_features
    from steering.cli.evaluate import load_for_cli

    sm = load_for_cli(args)
    catalogue = catalogue_for(args.sae, sm)
    extra = label_matches(catalogue, args.concept, max(args.limit, LABEL_CANDIDATES))
    texts = None
    if args.texts:
        with open(args.texts, encoding="utf-8") as fh:
            texts = [ln.strip() for ln in fh if ln.strip() and not ln.startswith("#")]
    try:
        found = find_concept_features(sm, args.concept, texts=texts, limit=args.limit, extra=extra)
        result = auto_steer(sm, args.concept, args.strength, extra=extra[:LABEL_CANDIDATES]) if args.try_prompt else None
    except SteeringError as exc:
        print(f"error ({exc.param}): {exc}", file=sys.stderr)
        return 2
    answers = None
    if result is not None:
        answers = sm.chat([{"role": "user", "content": args.try_prompt}], result.spec, max_tokens=args.max_tokens,
                          seed=args.seed, compare=True)
    labels = {c.index: catalogue.feature(c.index) for c in found} if catalogue is not None else {}
    if args.json:
        print(json.dumps({"candidates": [{**c.to_dict(), **({"catalogue": labels[c.index].to_dict()}
                                                           if c.index in labels else {})} for c in found],
                          "auto_steer": result.to_dict() if result else None,
                          "answers": {"steered": answers[0], "baseline": answers[1]} if answers else None}, indent=2))
        return 0
    print(f"{'feature':>8} {'score':>7} {'spec':>7} {'fireC':>6} {'fireN':>6} {'onword':>6} {'rank':>6}  promotes")
    for c in found:
        ws = "   n/a" if c.word_share is None else f"{c.word_share:6.2f}"
        print(f"{c.index:8d} {c.score:7.3f} {c.specificity:7.3f} {c.concept_fire_rate:6.2f} {c.neutral_fire_rate:6.2f} "
              f"{ws} {c.logit_rank:6d}  {' | '.join(repr(t) for t in c.promoted_tokens)}")
        info = labels.get(c.index)
        if info is not None:
            print(f"{'':8} label: {info.label!r}" + (f"; e.g. {info.contexts[0].text!r}" if info.contexts else ""))
    if result is not None and answers is not None:
        print(f"\nauto-steer: {result.rationale}")
        print(f"steered:  {answers[0].strip()!r}\nbaseline: {answers[1].strip()!r}")
    return 0


def label_matches(catalogue: Any | None, concept: str, limit: int = LABEL_CANDIDATES) -> list[int]:
    """Indices of the catalogue's best label matches for the concept (none without a catalogue)."""
    return [f.index for f in catalogue.search(concept, limit)] if catalogue is not None else []


def catalogue_for(sae_arg: str | None, sm: Any) -> Any | None:
    """The catalogue stored with the loaded SAE, if there is one (labels and contexts for the table)."""
    from pathlib import Path

    from steering.steered_model import shipped_sae_dir

    folder = Path(sae_arg) if sae_arg not in (None, "default", "none") else shipped_sae_dir(sm.model_id)
    if folder is None or sm.sae is None:
        return None
    try:
        from steering.sae.catalogue import Catalogue

        catalogue = Catalogue.load(folder)
    except (ImportError, OSError, ValueError, KeyError):
        return None
    return catalogue if len(catalogue) == sm.sae.d_sae else None


def add_subcommands(sub: Any) -> None:
    from steering.cli import add_model_arguments

    p = sub.add_parser("concept-search", help="rank SAE features for a concept (specificity x logit effect)")
    p.add_argument("concept")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--texts", default=None, help="file of concept texts, one a line (default: built-in templates)")
    p.add_argument("--try", dest="try_prompt", default=None, metavar="PROMPT",
                   help="also auto-steer this prompt and print the steered and unsteered answers")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    add_model_arguments(p)
    p.set_defaults(handler=_search_command)
