"""Auto-steer: a SteeringSpec for a concept given as text.

    result = auto_steer(sm, "dogs", strength=1.0)
    sm.chat(messages, result.spec)          # result.features says what was used

Features come from `concepts.find_concept_features` (specificity x logit
effect). Values: the top candidate is clamped to

    value = DEFAULT_MULTIPLIER * strength      (unit `max`, mode `clamp`, all positions)

DEFAULT_MULTIPLIER = 1.5 is the middle of the knees measured on the shipped SAE
(presets/*.json notes: the lowest strength at which a concept feature reached
its full concept rate was 1.2x max for sports and music, ~1.35x for mountains,
2-2.5x for happy and dogs; above 2.5x every concept's answers lost fluency,
delta loss > 2 nats). A
second feature is added only when `max_features` > 1 and its score is at least
SECOND_FEATURE_RATIO of the first's, and then the multiplier is split between
the two (two features at full strength broke every concept in the probe).

Search results are cached per SAE and per concept (lowercased, whitespace
collapsed) in memory, in a WeakKeyDictionary keyed by the SAE module, so a
new SAE never sees another's features; `strength` is applied after the cache.
The search runs forwards on the shared model: a server must run it where it
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
from dataclasses import dataclass, field
from typing import Any

from steering.concepts import ConceptCandidate, find_concept_features
from steering.interventions import FeatureClamp, SteeringError, SteeringSpec

DEFAULT_MULTIPLIER = 1.5
MAX_STRENGTH = 5.0
SECOND_FEATURE_RATIO = 0.8
MAX_CONCEPT_CHARS = 100

_CACHE: "weakref.WeakKeyDictionary[Any, dict[str, list[ConceptCandidate]]]" = weakref.WeakKeyDictionary()
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


def concept_candidates(sm: Any, concept: str) -> list[ConceptCandidate]:
    """find_concept_features for the concept, cached per SAE and concept."""
    if sm.sae is None:
        raise SteeringError("this server has no SAE loaded; steering is unavailable", "steering")
    key = _key(concept)
    with _LOCK:
        cached = _CACHE.get(sm.sae, {}).get(key)
    if cached is not None:
        return cached
    found = find_concept_features(sm, concept, limit=5)
    with _LOCK:
        _CACHE.setdefault(sm.sae, {})[key] = found
    return found


def is_cached(sm: Any, concept: str) -> bool:
    """True when `auto_steer(sm, concept, ...)` will run no forward pass (its search is cached)."""
    with _LOCK:
        return sm.sae is not None and _key(concept) in _CACHE.get(sm.sae, {})


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


def _use(sm: Any, c: ConceptCandidate, value: float) -> UsedFeature:
    """Clamp in `max` units; without a known max activation, in raw units of the largest seen in the search."""
    if math.isfinite(float(sm.sae.max_activation[c.index])):
        return UsedFeature(c.index, value, "clamp", "max", c.score, c.specificity, c.logit_rank, c.promoted_tokens)
    return UsedFeature(c.index, value * c.max_activation, "clamp", "raw", c.score, c.specificity, c.logit_rank,
                       c.promoted_tokens)


def auto_steer(sm: Any, concept: str, strength: float = 1.0, max_features: int = 1) -> AutoSteerResult:
    """Pick features and values for `concept`; raises SteeringError (param `steering.*`) when it cannot."""
    concept, strength = _check(concept, strength)
    candidates = concept_candidates(sm, concept)
    if not candidates:
        raise SteeringError(f"no feature of this SAE fires more on text about {concept!r} than on unrelated text",
                            "steering.concept")
    chosen = [candidates[0]]
    if max_features > 1:
        chosen += [c for c in candidates[1:max_features] if c.score >= SECOND_FEATURE_RATIO * candidates[0].score]
    value = DEFAULT_MULTIPLIER * strength / len(chosen)
    used = tuple(_use(sm, c, value) for c in chosen)
    spec = SteeringSpec(tuple(FeatureClamp(u.index, u.value, u.mode, u.unit) for u in used), "all")
    spec.validate(sm.sae)
    top = chosen[0]
    rationale = (
        f"feature {top.index}: specificity {top.specificity:.3f} (fires on {100 * top.concept_fire_rate:.0f}% of "
        f"texts about {concept!r}, {100 * top.neutral_fire_rate:.0f}% of unrelated ones), concept token rank "
        f"{top.logit_rank} among promoted tokens; clamped to {value:g} x max activation "
        f"({DEFAULT_MULTIPLIER:g} x strength {strength:g}"
        + (f", split over {len(chosen)} features" if len(chosen) > 1 else "") + ")"
    )
    return AutoSteerResult(concept, strength, spec, used, rationale, tuple(candidates))


# --------------------------------------------------------------------- CLI
def _search_command(args: Any) -> int:
    import json
    import sys

    from steering.concepts import find_concept_features
    from steering.eval_cli import load_for_cli

    sm = load_for_cli(args)
    catalogue = _catalogue_for(args.sae, sm)
    extra = [f.index for f in catalogue.search(args.concept, args.limit)] if catalogue is not None else []
    texts = None
    if args.texts:
        with open(args.texts, encoding="utf-8") as fh:
            texts = [ln.strip() for ln in fh if ln.strip() and not ln.startswith("#")]
    try:
        found = find_concept_features(sm, args.concept, texts=texts, limit=args.limit, extra=extra)
        result = auto_steer(sm, args.concept, args.strength) if args.try_prompt else None
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


def _catalogue_for(sae_arg: str | None, sm: Any) -> Any | None:
    """The catalogue stored with the loaded SAE, if there is one (labels and contexts for the table)."""
    from pathlib import Path

    from steering.steered_model import shipped_sae_dir

    folder = Path(sae_arg) if sae_arg not in (None, "default", "none") else shipped_sae_dir(sm.model_id)
    if folder is None or sm.sae is None:
        return None
    try:
        from steering.catalogue import Catalogue

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
