"""`python -m steering eval-steering`: the steering evaluation from the command line.

    eval-steering --preset NAME_OR_PATH[,NAME...] | --preset all | --feature I=V[:MODE[:UNIT]]...
                  | --concept TEXT [--strength S]
                  [--concept-words w1,w2] [--concept-features i,j] [--prompts FILE]
                  [--max-tokens N] [--seed S] [--samples K] [--temperature T] [--json | --markdown]

Several presets (or `all`: every presets/*.json made for the loaded model and
SAE) are evaluated together against one shared baseline. `--markdown` prints
one table row per target with a column saying whether it meets the
project's targets (`steering_eval.Bounds`). `--concept` measures auto-steer:
the target is the spec `steering.concepts.autosteer.auto_steer` picks for TEXT (what a
chat request with `"steering": {"concept": TEXT, "strength": S}` would use),
judged by the features it picked and by the concept words (default: TEXT in
simple singular and plural). The argument helpers here are shared with
`python -m steering sweep`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from steering.evaluation.prompts import EvalPreset, load_preset, load_prompts
from steering.interventions import SteeringError, SteeringSpec, parse_clamp
from steering.evaluation.run import Bounds, Concept, EvalResult, EvalSettings, EvalTarget, evaluate_targets


def add_target_arguments(p: argparse.ArgumentParser, several: bool = False) -> None:
    """Arguments shared by eval-steering and sweep: what to steer, how to judge, how to sample."""
    from steering.cli import add_model_arguments

    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--preset", help="preset name (presets/NAME.json) or path to a preset file"
                      + ("; several comma-separated, or `all`" if several else ""))
    what.add_argument("--feature", action="append", metavar="I=V[:MODE[:UNIT]]", help="a clamp (repeatable)")
    what.add_argument("--concept", default=None, metavar="TEXT",
                      help="auto-steer: evaluate the features and values auto-steer picks for TEXT")
    p.add_argument("--strength", type=float, default=1.0, help="auto-steer strength (with --concept)")
    p.add_argument("--positions", choices=("all", "prompt", "generated"), default=None,
                   help="override the positions (with --generated-limit: a pair; setting either replaces both)")
    p.add_argument("--generated-limit", type=int, default=None, metavar="N",
                   help="clamp only the first N generated tokens (overrides the preset's window, see --positions)")
    p.add_argument("--concept-words", default=None, help="comma-separated concept words (overrides the preset's)")
    p.add_argument("--concept-features", default=None,
                   help="comma-separated feature indices judged on the answers (default: the preset's, else its positive clamps)")
    p.add_argument("--fire-fraction", type=float, default=0.2, help="a concept feature fires at >= this x its max")
    p.add_argument("--presets-dir", default="presets")
    p.add_argument("--prompts", default=None, help="prompt file, one a line (default: the shipped neutral prompts)")
    p.add_argument("--limit-prompts", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.7, help="0 for greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=1,
                   help="answers per prompt (sample k of prompt j of n is seeded SEED + k*n + j); rates over all of them")
    p.add_argument("--batch-size", type=int, default=64, help="rows per generation batch")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    add_model_arguments(p)


def load_for_cli(args: argparse.Namespace) -> Any:
    from steering.steered_model import SteeredModel

    if args.threads:
        torch.set_num_threads(args.threads)
    sm = SteeredModel.load(args.model, args.sae, device=args.device, dtype=args.dtype)
    if sm.sae_note:
        print(f"note: {sm.sae_note}", file=sys.stderr)
    return sm


def _check_preset(preset: EvalPreset, sm: Any) -> str | None:
    """Why the preset cannot run on `sm` (None when it can)."""
    for what, want, have in (("model", preset.model, sm.model_id), ("sae", preset.sae, sm.sae_id)):
        if want is not None and want != have:
            return f"preset {preset.name!r} was made for {what} {want!r}; loaded: {have!r}"
    return None


def _in_window(args: argparse.Namespace, spec: SteeringSpec) -> SteeringSpec:
    """The spec in the command line's window if it sets --positions or --generated-limit (a pair)."""
    if args.positions is None and args.generated_limit is None:
        return spec
    return SteeringSpec(spec.features, args.positions or "all", args.generated_limit)


def _concept_target(args: argparse.Namespace, sm: Any, words: list[str] | None,
                    feats: list[int] | None) -> EvalTarget:
    """Auto-steer's choice for `args.concept`, in the requested window (else auto-steer's own)."""
    from steering.concepts.autosteer import auto_steer, catalogue_for, label_matches
    from steering.concepts.search import number_forms

    auto = auto_steer(sm, args.concept, args.strength, extra=label_matches(catalogue_for(args.sae, sm), args.concept))
    spec = _in_window(args, auto.spec)
    print(f"note: auto-steer: {auto.rationale}", file=sys.stderr)
    words = words if words is not None else number_forms(auto.concept)
    return EvalTarget(f"concept:{auto.concept}", spec, Concept.for_spec(spec, words, feats, args.fire_fraction))


def _target(args: argparse.Namespace, preset: EvalPreset | None, sm: Any = None) -> EvalTarget:
    words = [w.strip() for w in args.concept_words.split(",")] if args.concept_words else None
    feats = [int(i) for i in args.concept_features.split(",") if i.strip()] if args.concept_features else None
    if preset is None and args.concept is not None:
        return _concept_target(args, sm, words, feats)
    if preset is None:
        spec = SteeringSpec(tuple(parse_clamp(t) for t in args.feature), args.positions or "all", args.generated_limit)
        return EvalTarget(", ".join(args.feature), spec, Concept.for_spec(spec, words or (), feats, args.fire_fraction))
    spec = _in_window(args, preset.spec)
    words = words if words is not None else list(preset.concept_words)
    if feats is None and preset.concept_features is not None:
        feats = list(preset.concept_features)
    return EvalTarget(preset.name, spec, Concept.for_spec(spec, words, feats, args.fire_fraction), preset.system_prompt)


def resolve_targets(args: argparse.Namespace, sm: Any) -> tuple[list[EvalTarget], EvalSettings, list[str]]:
    """(targets, settings, prompts) from the CLI arguments; a preset for another model or SAE is an error
    (skipped with a note under `--preset all`)."""
    targets: list[EvalTarget] = []
    if args.preset == "all":
        paths = sorted(Path(args.presets_dir).glob("*.json"))
        for path in paths:
            preset = load_preset(path)
            why = _check_preset(preset, sm)
            if why:
                print(f"note: skipped: {why}", file=sys.stderr)
            else:
                targets.append(_target(args, preset))
        if not targets:
            raise SteeringError(f"no preset in {args.presets_dir} is made for the loaded model and SAE", "preset")
    elif args.preset:
        for name in args.preset.split(","):
            preset = load_preset(name.strip(), args.presets_dir)
            why = _check_preset(preset, sm)
            if why:
                raise SteeringError(why, "preset")
            targets.append(_target(args, preset))
    else:
        targets.append(_target(args, None, sm))
    settings = EvalSettings(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                            samples=args.samples, batch_size=args.batch_size)
    prompts = load_prompts(args.prompts)[: args.limit_prompts]
    return targets, settings, prompts


def resolve_target(args: argparse.Namespace, sm: Any) -> tuple[str, SteeringSpec, Concept, EvalSettings, list[str]]:
    """One target (a sweep): (label, spec, concept, settings with its system prompt, prompts)."""
    targets, settings, prompts = resolve_targets(args, sm)
    if len(targets) != 1:
        raise SteeringError("give one preset", "preset")
    t = targets[0]
    settings = EvalSettings(**{**settings.__dict__, "system_prompt": t.system_prompt})
    return t.label, t.spec, t.concept, settings, prompts


def markdown_table(results: list[EvalResult], bounds: Bounds = Bounds()) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.0f}%"

    lines = ["| preset | concept rate | baseline | repeated 4-grams | Δloss (nats) | targets |",
             "|---|---|---|---|---|---|"]
    for r in results:
        dl = "n/a" if r.delta_loss is None else f"{r.delta_loss:+.2f}"
        lines.append(f"| {r.label} | {pct(r.concept_rate)} | {pct(r.baseline_concept_rate)} | "
                     f"{pct(r.repeated_4gram)} | {dl} | {'met' if r.meets(bounds) else 'not met'} |")
    return "\n".join(lines)


def _eval_command(args: argparse.Namespace) -> int:
    sm = load_for_cli(args)
    try:
        targets, settings, prompts = resolve_targets(args, sm)
        results = evaluate_targets(sm, targets, prompts, settings)
    except SteeringError as exc:
        print(f"error ({exc.param}): {exc}", file=sys.stderr)
        return 2
    if args.json:
        out = [r.to_dict() for r in results]
        print(json.dumps(out[0] if len(out) == 1 and args.preset != "all" else out, indent=2))
        return 0
    if args.markdown:
        print(markdown_table(results))
        return 0
    first = results[0]
    print(f"{len(prompts)} prompts x {settings.max_tokens} tokens, {first.seconds:.1f} s "
          f"(generation {first.generate_seconds:.1f} s, scoring {first.score_seconds:.1f} s)")
    for r in results:
        print(f"\n{r.summary()}\n  rule: {r.concept_rule}; targets {'met' if r.meets() else 'not met'}")
        for ex in r.examples:
            print(f"  > {ex['prompt']}\n    steered:  {ex['steered'].strip()!r}\n    baseline: {ex['baseline'].strip()!r}")
    return 0


def add_subcommands(sub: Any) -> None:
    p = sub.add_parser("eval-steering", help="concept rate and fluency of presets or clamps on neutral prompts")
    add_target_arguments(p, several=True)
    p.add_argument("--markdown", action="store_true", help="print a table row per preset (for the README)")
    p.set_defaults(handler=_eval_command)
