"""Measurements: does a steering spec steer, do monitors flag what they should, how fast is the engine.

    targets   EvalTarget, Concept (how answers are judged), EvalSettings, Bounds (the targets)
    run       evaluate_targets: steered and baseline answers to neutral prompts, read back
    scoring   next-token loss under the plain model, concept features' peaks, the judge
    results   EvalResult per target, AnswerRecord per answer, the README table
    metrics   concept words and repeated n-grams (pure functions of text)
    prompts   named prompt sets with a selection half and a check half (neutral, topic sets)
    sweep     one target at several strength multipliers, and the knee
    monitoring  monitors' flag rates on labelled prompts; choosing monitors from examples
    benchmark   the engine's speed and consistency, side by side (`python -m steering bench`)

Generation goes through `steering.engine.generate_batch` in the caller's
thread; nothing here knows of HTTP or parses arguments (the commands are in
`steering.cli`).
"""

from steering.evaluation.prompts import NEUTRAL_PROMPTS, load_prompts, prompt_set_path
from steering.evaluation.results import AnswerRecord, EvalResult, markdown_table
from steering.evaluation.run import evaluate, evaluate_preset, evaluate_presets, evaluate_specs, evaluate_targets
from steering.evaluation.scoring import score_answers
from steering.evaluation.sweep import SweepPoint, SweepResult, pick_knee, sweep
from steering.evaluation.targets import Bounds, Concept, EvalSettings, EvalTarget

__all__ = [
    "NEUTRAL_PROMPTS", "load_prompts", "prompt_set_path", "AnswerRecord", "EvalResult", "markdown_table", "evaluate",
    "evaluate_preset", "evaluate_presets", "evaluate_specs", "evaluate_targets", "score_answers", "SweepPoint",
    "SweepResult", "pick_knee", "sweep", "Bounds", "Concept", "EvalSettings", "EvalTarget",
]
