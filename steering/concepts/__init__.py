"""Concepts in words to SAE features: concept search, a generation probe, and auto-steer.

    search      rank features for a concept: specificity on text about it x logit effect
    direction   the concept's difference in means over the SAE's features (auto-steer's default)
    probe       clamp each candidate on a few short seeded answers and measure which steers
    autosteer   `AutoSteerer`: a concept and a strength to a SteeringSpec, remembering concepts
    results     what auto-steer returns

This package knows the model and SAE only through a `SteeredModel` (and its
catalogue's label matches); it knows nothing of HTTP or of the engine's
threads: a server runs these forwards alone on the model (`api.gate`).
"""

from steering.concepts.autosteer import (
    DEFAULT_MULTIPLIER,
    DEFAULT_WINDOW,
    LABEL_CANDIDATES,
    MAX_CONCEPT_CHARS,
    MAX_STRENGTH,
    DEFAULT_METHOD,
    METHODS,
    AutoSteerer,
    auto_steer,
    label_matches,
)
from steering.concepts.direction import DIRECTION_FEATURES, DIRECTION_PUSH, concept_direction
from steering.concepts.probe import PROBE_PROMPTS, ProbeResult, ProbeSettings, best_probe, probe_specs, ranked_probes
from steering.concepts.results import AutoSteerResult, UsedFeature
from steering.concepts.search import ConceptCandidate, concept_texts, find_concept_features, neutral_texts, number_forms

__all__ = [
    "AutoSteerer", "AutoSteerResult", "DEFAULT_METHOD", "METHODS", "DIRECTION_FEATURES", "DIRECTION_PUSH",
    "concept_direction", "UsedFeature", "auto_steer", "label_matches", "DEFAULT_MULTIPLIER",
    "DEFAULT_WINDOW", "LABEL_CANDIDATES", "MAX_CONCEPT_CHARS", "MAX_STRENGTH", "PROBE_PROMPTS", "ProbeResult",
    "ProbeSettings", "best_probe", "probe_specs", "ranked_probes", "ConceptCandidate", "concept_texts",
    "find_concept_features", "neutral_texts", "number_forms",
]
