"""`python -m steering sweep`: concept rate and fluency of one target per strength multiplier, and the knee.

    sweep --preset NAME | --feature I=V... | --concept TEXT [--multipliers 0.5,1,2] [--plot OUT.png] [--json]
          [bounds: --target-concept-rate --max-baseline-concept-rate --max-repeated-4gram --max-delta-loss]

The other arguments are eval-steering's (`steering.cli.targets`); the
measurement and the knee rule: `steering.evaluation.sweep`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from steering.cli.common import CommandError, load_steered
from steering.cli.targets import add_target_arguments, resolve_targets
from steering.errors import SteeringError
from steering.evaluation import Bounds
from steering.evaluation.sweep import DEFAULT_MULTIPLIERS, plot_sweep, sweep


def run(args: argparse.Namespace) -> int:
    try:
        multipliers = [float(m) for m in args.multipliers.split(",") if m.strip()]
    except ValueError:
        raise CommandError(f"bad list {args.multipliers!r}", "multipliers") from None
    sm = load_steered(args)
    groups = resolve_targets(args, sm)
    if len(groups) != 1 or len(groups[0].targets) != 1:
        raise SteeringError("give one preset", "preset")
    prompts, settings, target = groups[0].prompts, groups[0].settings, groups[0].targets[0]
    settings = dataclasses.replace(settings, system_prompt=target.system_prompt)
    bounds = Bounds(args.target_concept_rate, args.max_baseline_concept_rate, args.max_repeated_4gram,
                    args.max_delta_loss)
    result = sweep(sm, target.spec, target.concept, multipliers, prompts, settings, bounds, target.label)
    if args.plot:
        plot_sweep(result, args.plot)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"{target.label}; rule: {target.concept.rule}; {len(prompts)} prompts x {settings.max_tokens} tokens, "
              f"{result.results[0].seconds:.1f} s")
        print(result.table())
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("sweep", help="concept rate and fluency of a preset or clamps per strength multiplier")
    add_target_arguments(p)
    p.add_argument("--multipliers", default=",".join(f"{m:g}" for m in DEFAULT_MULTIPLIERS))
    p.add_argument("--plot", default=None, metavar="OUT.png", help="write a PNG plot of the sweep")
    p.add_argument("--target-concept-rate", type=float, default=Bounds.concept_rate)
    p.add_argument("--max-baseline-concept-rate", type=float, default=Bounds.baseline_concept_rate)
    p.add_argument("--max-repeated-4gram", type=float, default=Bounds.repeated_4gram)
    p.add_argument("--max-delta-loss", type=float, default=Bounds.delta_loss)
    p.set_defaults(handler=run)
