"""Reading the model: which SAE features are active, per token and per text, and what separates two sets.

    readout    InspectSpec; the per-token readout (top-k active features, named features)
    text       inspect existing text: a conversation or a string, per token and summarised
    contrast   the features that best separate two sets of texts (effect size, fire rates)

Inspection during generation (per generated token, monitors) reads the same
way inside the engine's forward. Nothing here knows of HTTP; forwards on the
shared model must not overlap the engine's (a server runs them alone, `api.gate`).
"""

from steering.inspection.contrast import ContrastFeature, ContrastResult, contrast
from steering.inspection.readout import (
    INSPECT_POSITIONS,
    MAX_NAMED_FEATURES,
    MAX_TOP_K,
    FeatureValue,
    InspectSpec,
    TokenReading,
    max_activations,
    read_tokens,
    readings,
)
from steering.inspection.text import FeatureTotal, TextInspection, inspect_texts, token_rows

__all__ = [
    "ContrastFeature", "ContrastResult", "contrast", "INSPECT_POSITIONS", "MAX_NAMED_FEATURES", "MAX_TOP_K",
    "FeatureValue", "InspectSpec", "TokenReading", "max_activations", "read_tokens", "readings", "FeatureTotal",
    "TextInspection", "inspect_texts", "token_rows",
]
