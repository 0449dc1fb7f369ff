"""`python -m steering eval-steering`: concept rate and fluency of presets, clamps or auto-steer.

Arguments: `steering.cli.targets`; the measurement: `steering.evaluation`.
`--markdown` prints one table row per target with a column saying whether
it meets the project's targets (`steering.evaluation.Bounds`).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from steering.cli.common import load_steered
from steering.cli.targets import add_target_arguments, resolve_targets
from steering.evaluation import evaluate_targets, markdown_table


def run(args: argparse.Namespace) -> int:
    sm = load_steered(args)
    results = []
    for group in resolve_targets(args, sm):
        results += evaluate_targets(sm, group.targets, group.prompts, group.settings)
    if args.json:
        out = [r.to_dict() for r in results]
        print(json.dumps(out[0] if len(out) == 1 and args.preset != "all" else out, indent=2))
        return 0
    if args.markdown:
        print(markdown_table(results))
        return 0
    for r in results:
        print(f"\n{r.n_prompts} prompts ({r.settings['prompt_set'] or 'given'} {r.settings['half'] or ''}) x "
              f"{r.settings['samples']} samples x {r.settings['max_tokens']} tokens, {r.seconds:.1f} s "
              f"(generation {r.generate_seconds:.1f} s, scoring {r.score_seconds:.1f} s)")
        print(f"{r.summary()}\n  rule: {r.concept_rule}; targets {'met' if r.meets() else 'not met'}")
        for ex in r.examples:
            print(f"  > {ex['prompt']}\n    steered:  {ex['steered'].strip()!r}\n    baseline: {ex['baseline'].strip()!r}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("eval-steering", help="concept rate and fluency of presets or clamps on neutral prompts")
    add_target_arguments(p, several=True, report=True)
    p.add_argument("--markdown", action="store_true", help="print a table row per preset (for the README)")
    p.set_defaults(handler=run)
