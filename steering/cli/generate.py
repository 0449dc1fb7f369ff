"""`python -m steering generate "PROMPT"`: answer one prompt, optionally steered and compared.

    generate "PROMPT" [--clamp INDEX=VALUE[:MODE][:UNIT]]... [--compare]
             [--max-tokens N] [--seed S] [--temperature T] [--positions all|prompt|generated]
             [--generated-limit N] [--system TEXT] [--model M] [--sae PATH] [--dtype D] [--device D]
"""

from __future__ import annotations

import argparse
from typing import Any

from steering.cli.common import (
    CLAMP_FORM,
    add_model_arguments,
    add_window_arguments,
    clamp_help,
    load_steered,
    parse_clamp,
)
from steering.interventions import SteeringSpec


def run(args: argparse.Namespace) -> int:
    clamps = tuple(parse_clamp(text) for text in args.clamp)
    spec = SteeringSpec(features=clamps, positions=args.positions, generated_limit=args.generated_limit)
    spec.validate_window()
    sm = load_steered(args)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}
    ]
    texts = sm.chat(messages, spec, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                    compare=args.compare)
    label = ", ".join(f"{c.index}={c.value:g}:{c.mode}:{c.unit}" for c in clamps) or "no clamps"
    limit = f", first {args.generated_limit} generated tokens" if args.generated_limit is not None else ""
    print(f"=== steered ({label}; positions {args.positions}{limit}; seed {args.seed}) ===")
    print(texts[0].strip())
    if args.compare:
        print(f"\n=== unsteered (same seed {args.seed}) ===")
        print(texts[1].strip())
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("generate", help="answer one prompt, optionally steered, optionally with the unsteered answer")
    p.add_argument("prompt")
    p.add_argument("--clamp", action="append", default=[], metavar=CLAMP_FORM, help=clamp_help())
    add_window_arguments(p, default="all")
    p.add_argument("--compare", action="store_true", help="also print the unsteered answer from the same seed")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.7, help="0 for greedy")
    p.add_argument("--system", default=None, help="a system message")
    add_model_arguments(p)
    p.set_defaults(handler=run)
