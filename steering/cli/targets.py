"""What eval-steering and sweep measure, from their shared arguments.

    --preset NAME_OR_PATH[,NAME...] | --preset all | --feature I=V[:MODE[:UNIT]]... | --concept TEXT [--strength S]
    [--positions P] [--generated-limit N] [--concept-words w1,w2] [--concept-features i,j] [--fire-fraction F]
    [--presets-dir DIR] [--prompt-set NAME] [--half select|check] [--prompts FILE] [--limit-prompts N]
    [--max-tokens N] [--temperature T] [--seed S] [--samples K] [--batch-size B] [--json]

Several presets (or `all`: every presets/*.json made for the loaded model
and SAE) are evaluated together, one shared baseline per prompt set: each
preset is answered on its own `prompt_set` (neutral, or the topic set of a
suppression preset), the half given by `--half`. eval-steering reports on
the check half with fresh seeds (1000 on, 2 answers a prompt), sweep and
screens choose on the selection half (seed 0), so a setting is never
reported on the prompts and seeds it was chosen on
(`steering.evaluation.prompts`). `--concept`
measures auto-steer: the target is the spec `AutoSteerer.steer` picks for
TEXT (what a chat request with `"steering": {"concept": TEXT, "strength": S}`
uses), judged by the features it picked and by the concept words (default:
TEXT in simple singular and plural). Presets are read by `steering.presets`
(drafts allowed: model, sae and description may be missing).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from steering.cli.common import CLAMP_FORM, add_model_arguments, add_window_arguments, parse_clamp
from steering.concepts import AutoSteerer, number_forms
from steering.concepts.autosteer import DEFAULT_METHOD, METHODS
from steering.errors import SteeringError
from steering.evaluation import Concept, EvalSettings, EvalTarget, load_prompts, prompt_set_path
from steering.evaluation.prompts import HALVES
from steering.interventions import SteeringSpec
from steering.presets import Preset, find_preset, read_preset, unavailable_reason

# A report's answers: the bound for a preset's efficacy (>= 90 answers).
REPORT_ANSWERS = 90

if TYPE_CHECKING:
    from steering.steered_model import SteeredModel


def add_target_arguments(p: argparse.ArgumentParser, several: bool = False, report: bool = False) -> None:
    """Arguments shared by eval-steering and sweep: what to steer, how to judge, how to sample.

    `report`: the defaults of a report (check half, seeds from 1000, enough samples for REPORT_ANSWERS
    answers and at least 2) instead of a selection's (selection half, seed 0, 1 sample)."""
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--preset", help="preset name (presets/NAME.json) or path to a preset file"
                      + ("; several comma-separated, or `all`" if several else ""))
    what.add_argument("--feature", action="append", metavar=CLAMP_FORM, help="a clamp (repeatable)")
    what.add_argument("--concept", default=None, metavar="TEXT",
                      help="auto-steer: evaluate the features and values auto-steer picks for TEXT")
    p.add_argument("--strength", type=float, default=1.0, help="auto-steer strength (with --concept)")
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                   help="how auto-steer steers (with --concept): the concept's direction over several features, "
                   "or one probed feature")
    add_window_arguments(p, default=None, override=True)
    p.add_argument("--compare-prompt", default=None, metavar="TEXT",
                   help="also measure prompting instead: answers with this system prompt and no clamps "
                   "(default: a preset's own compare_prompt)")
    p.add_argument("--concept-words", default=None, help="comma-separated concept words (overrides the preset's)")
    p.add_argument("--concept-features", default=None,
                   help="comma-separated feature indices judged on the answers (default: the preset's, else its positive clamps)")
    p.add_argument("--fire-fraction", type=float, default=0.2, help="a concept feature fires at >= this x its max")
    p.add_argument("--presets-dir", default="presets")
    p.add_argument("--prompt-set", default=None, metavar="NAME",
                   help="a shipped prompt set: neutral or a topic set (default: each preset's own, else neutral)")
    p.add_argument("--half", choices=HALVES, default="check" if report else "select",
                   help="which half of the prompt set: select (choose settings) or check (report them)")
    p.add_argument("--prompts", default=None, help="prompt file, one a line (instead of a prompt set)")
    p.add_argument("--limit-prompts", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.7, help="0 for greedy")
    p.add_argument("--seed", type=int, default=1000 if report else 0)
    p.add_argument("--samples", type=int, default=None if report else 1,
                   help="answers per prompt (sample k of prompt j of n is seeded SEED + k*n + j); rates over all of them"
                   + (f" (default: enough for {REPORT_ANSWERS} answers, at least 2: 2 on 46 prompts, 9 on 10)"
                      if report else ""))
    p.add_argument("--batch-size", type=int, default=64, help="rows per generation batch")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    add_model_arguments(p)


def _in_window(args: argparse.Namespace, spec: SteeringSpec) -> SteeringSpec:
    """The spec in the command line's window if it sets --positions or --generated-limit (a pair)."""
    if args.positions is None and args.generated_limit is None:
        return spec
    return SteeringSpec(spec.features, args.positions or "all", args.generated_limit)


def _concept_target(args: argparse.Namespace, sm: "SteeredModel", words: list[str] | None,
                    feats: list[int] | None) -> EvalTarget:
    """Auto-steer's choice for `args.concept`, in the requested window (else auto-steer's own)."""
    auto = AutoSteerer(sm, method=args.method).steer(args.concept, args.strength)
    spec = _in_window(args, auto.spec)
    print(f"note: auto-steer: {auto.rationale}", file=sys.stderr)
    words = words if words is not None else number_forms(auto.concept)
    return EvalTarget(f"concept:{auto.concept}", spec, Concept.for_spec(spec, words, feats, args.fire_fraction),
                      compare_prompt=args.compare_prompt)


def _target(args: argparse.Namespace, preset: Preset | None, sm: "SteeredModel") -> EvalTarget:
    words = [w.strip() for w in args.concept_words.split(",")] if args.concept_words else None
    feats = [int(i) for i in args.concept_features.split(",") if i.strip()] if args.concept_features else None
    if preset is None and args.concept is not None:
        return _concept_target(args, sm, words, feats)
    if preset is None:
        spec = SteeringSpec(tuple(parse_clamp(t) for t in args.feature), args.positions or "all", args.generated_limit)
        return EvalTarget(", ".join(args.feature), spec, Concept.for_spec(spec, words or (), feats, args.fire_fraction),
                          compare_prompt=args.compare_prompt)
    spec = _in_window(args, preset.spec)
    words = words if words is not None else list(preset.concept_words)
    if feats is None and preset.concept_features is not None:
        feats = list(preset.concept_features)
    concept = Concept.for_spec(spec, words, feats, args.fire_fraction, preset.monitors)
    return EvalTarget(preset.name, spec, concept, preset.system_prompt, preset.monitors, preset.goal,
                      args.compare_prompt or preset.compare_prompt)


def _why_not(preset: Preset, sm: "SteeredModel") -> str | None:
    if not preset.features and not any(m.action == "steer" for m in preset.monitors):
        return f"preset {preset.name!r} has no clamps (it only watches: measure it with eval-monitors)"
    why = unavailable_reason(preset, sm.model_id, sm.sae_id, sm.sae)
    return None if why is None else f"preset {preset.name!r} {why}"


@dataclass
class TargetGroup:
    """Targets answered on the same prompts against one shared baseline."""

    prompts: list[str]
    targets: list[EvalTarget]
    settings: EvalSettings


def resolve_targets(args: argparse.Namespace, sm: "SteeredModel") -> list[TargetGroup]:
    """Targets from the arguments, grouped by the prompts they are answered on (see the module docstring);
    a preset for another model or SAE is an error (skipped with a note under `--preset all`)."""
    found: list[tuple[EvalTarget, str]] = []  # (target, its prompt set)
    if args.preset == "all":
        for path in sorted(Path(args.presets_dir).glob("*.json")):
            preset = read_preset(path, draft=True)
            why = _why_not(preset, sm)
            if why:
                print(f"note: skipped: {why}", file=sys.stderr)
            else:
                found.append((_target(args, preset, sm), preset.prompt_set))
        if not found:
            raise SteeringError(f"no preset in {args.presets_dir} is made for the loaded model and SAE", "preset")
    elif args.preset:
        for name in args.preset.split(","):
            preset = find_preset(name.strip(), args.presets_dir)
            why = _why_not(preset, sm)
            if why:
                raise SteeringError(why, "preset")
            found.append((_target(args, preset, sm), preset.prompt_set))
    else:
        found.append((_target(args, None, sm), "neutral"))
    groups: dict[str, TargetGroup] = {}
    for target, own_set in found:
        name = "given" if args.prompts else args.prompt_set or own_set
        if name not in groups:
            path = args.prompts or prompt_set_path(name, args.half)
            prompts = load_prompts(path)[: args.limit_prompts]
            samples = args.samples
            if samples is None:  # a report: enough answers for the bound, at least two per prompt
                samples = max(2, math.ceil(REPORT_ANSWERS / max(len(prompts), 1)))
            settings = EvalSettings(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                                    samples=samples, batch_size=args.batch_size,
                                    prompt_set=None if args.prompts else name, half=None if args.prompts else args.half)
            groups[name] = TargetGroup(prompts, [], settings)
        groups[name].targets.append(target)
    return list(groups.values())
