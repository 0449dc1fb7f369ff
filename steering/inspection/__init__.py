"""Reading existing text with a SteeredModel: per-token features of a conversation, and contrast.

    text       inspect a conversation or a string, per token and summarised
    contrast   the features that best separate two sets of texts (effect size, fire rates)

The per-token readout they share, and the specs a generation reads with, are
`steering.readings` (InspectSpec, the readout) and `steering.monitors`; the
engine reads generating rows the same way (`steering.engine.readout`).
Nothing here knows of HTTP; forwards on the shared model must not overlap the
engine's (a server runs them alone, `api.gate`).
"""

from steering.inspection.contrast import ContrastFeature, ContrastResult, contrast
from steering.inspection.text import FeatureTotal, TextInspection, inspect_texts, token_rows

__all__ = ["ContrastFeature", "ContrastResult", "contrast", "FeatureTotal", "TextInspection", "inspect_texts",
           "token_rows"]
