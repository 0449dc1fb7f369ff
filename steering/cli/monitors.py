"""Monitor commands: choose a monitor's features from examples, and measure its flag rates.

    screen-monitors --on FILE... --off FILE... [--max-off-answers K] [--limit N] [--json]
    eval-monitors (--preset NAME | --monitor I=THRESHOLD[:UNIT]...) --on FILE --off FILE [--json]

Prompt files hold one prompt a line (`steering/data/monitor_prompts/`);
`--on` and `--off` may be repeated (the files' prompts are pooled);
answers are sampled as `steering.evaluation.monitoring` says. Choose on one
set of prompts and report on another.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from steering.cli.common import CommandError, add_model_arguments, load_steered
from steering.errors import SteeringError
from steering.evaluation.monitoring import MonitorSettings, evaluate_monitors, greedy_cover, screen_features
from steering.evaluation.prompts import load_prompts
from steering.monitors import Monitor, validate_monitors
from steering.presets import find_preset


def _settings(args: argparse.Namespace) -> MonitorSettings:
    return MonitorSettings(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)


def _pooled(files: list[str] | None) -> list[str]:
    """The prompts of every file given (none: the shipped neutral prompts)."""
    return [p for f in files for p in load_prompts(f)] if files else load_prompts(None)


def _parse_monitor(text: str) -> Monitor:
    try:
        index, rest = text.split("=", 1)
        threshold, _, unit = rest.partition(":")
        return Monitor(int(index), float(threshold), unit or "max", "flag")
    except ValueError:
        raise CommandError(f"bad monitor {text!r}: expected INDEX=THRESHOLD[:UNIT]", "monitor") from None


def screen(args: argparse.Namespace) -> int:
    sm = load_steered(args)
    if sm.sae is None:
        raise SteeringError("monitors need an SAE", "sae")
    cands, on_peaks, off_peaks = screen_features(sm, _pooled(args.on), _pooled(args.off), _settings(args),
                                                 args.max_off_answers, limit=args.limit)
    cover = greedy_cover(cands, on_peaks, off_peaks, args.max_features)
    label = (lambda i: sm.catalogue.labels[i]) if sm.catalogue is not None else (lambda i: None)  # noqa: E731
    out = {"candidates": [{**dataclasses.asdict(c), "label": label(c.index)} for c in cands],
           "cover": [{"index": c.index, "threshold": c.threshold, "unit": "raw", "label": label(c.index)} for c in cover]}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for c in out["candidates"]:
        print(f"{c['index']:6d}  threshold {c['threshold']:7.3f}  on {100 * c['on_rate']:5.1f}%  "
              f"off {100 * c['off_rate']:5.1f}%  {c['label']!r}")
    print("cover (OR):", ", ".join(f"{c['index']}>={c['threshold']:.3f}" for c in out["cover"]))
    return 0


def evaluate(args: argparse.Namespace) -> int:
    sm = load_steered(args)
    if sm.sae is None:
        raise SteeringError("monitors need an SAE", "sae")
    monitors = tuple(_parse_monitor(m) for m in args.monitor)
    if args.preset:
        monitors = find_preset(args.preset, args.presets_dir).monitors + monitors
    if not monitors:
        raise CommandError("give --preset with monitors or --monitor", "monitor")
    validate_monitors(monitors, sm.sae)
    rates = evaluate_monitors(sm, monitors, _pooled(args.on), _pooled(args.off), _settings(args))
    out = {**dataclasses.asdict(rates), "meets_targets": rates.meets(), "max_tokens": args.max_tokens,
           "temperature": args.temperature, "seed": args.seed, "on": ", ".join(args.on),
           "off": ", ".join(args.off) if args.off else "neutral prompts",
           "monitors": [dataclasses.asdict(m) for m in monitors]}
    print(json.dumps(out, indent=2) if args.json else
          f"flagged {rates.flagged_on}/{rates.n_on} on-topic ({100 * rates.flag_rate_on:.1f}%), "
          f"{rates.flagged_off}/{rates.n_off} off-topic ({100 * rates.flag_rate_off:.1f}%); "
          f"targets (>= 90%, <= 10%) {'met' if rates.meets() else 'not met'}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on", required=True, action="append", help="on-topic prompts, one a line (repeatable)")
    p.add_argument("--off", action="append", help="off-topic prompts (repeatable; default: the shipped neutral prompts)")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    add_model_arguments(p)


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("screen-monitors", help="choose monitor features and thresholds from on/off-topic prompts")
    _common(p)
    p.add_argument("--max-off-answers", type=int, default=0, help="off-topic answers a threshold may flag")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--max-features", type=int, default=3, help="features in the OR cover")
    p.set_defaults(handler=screen)
    p = sub.add_parser("eval-monitors", help="flag rates of a preset's monitors on on/off-topic prompts")
    _common(p)
    p.add_argument("--preset", default=None, help="preset name or file whose monitors to measure")
    p.add_argument("--presets-dir", default="presets")
    p.add_argument("--monitor", action="append", default=[], metavar="I=THRESHOLD[:UNIT]")
    p.set_defaults(handler=evaluate)
