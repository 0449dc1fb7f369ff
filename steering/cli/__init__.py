"""Command line: `python -m steering COMMAND ...`.

    generate "PROMPT" [--clamp INDEX=VALUE[:MODE][:UNIT]]... [--compare]
             [--max-tokens N] [--seed S] [--temperature T] [--positions all|prompt|generated]
             [--generated-limit N] [--system TEXT] [--model M] [--sae PATH] [--dtype D] [--device D]

Other subcommands (training, evaluation, benchmarks) register themselves
through `add_subcommands(subparsers)` functions of their own modules.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from steering.interventions import SteeringError, SteeringSpec, parse_clamp

# Modules that contribute subcommands: each exposes add_subcommands(subparsers).
SUBCOMMAND_MODULES = ("steering.cli.training", "steering.cli.evaluate", "steering.evaluation.sweep", "steering.concepts.autosteer", "steering.engine.benchmark")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model/--sae/--dtype/--device/--threads, shared by every command that loads a model."""
    parser.add_argument("--model", default=None, help="HF model directory or cached hub id (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--sae", default=None, help="SAE folder or file (default: the shipped SAE for the model)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _generate(args: argparse.Namespace) -> int:
    import torch

    from steering.steered_model import SteeredModel

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        clamps = tuple(parse_clamp(text) for text in args.clamp)
    except SteeringError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    spec = SteeringSpec(features=clamps, positions=args.positions, generated_limit=args.generated_limit)
    sm = SteeredModel.load(args.model, args.sae, device=args.device, dtype=args.dtype)
    if sm.sae_note:
        print(f"note: {sm.sae_note}", file=sys.stderr)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}
    ]
    try:
        texts = sm.chat(
            messages,
            spec,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            seed=args.seed,
            compare=args.compare,
        )
    except SteeringError as exc:
        print(f"error ({exc.param}): {exc}", file=sys.stderr)
        return 2
    label = ", ".join(f"{c.index}={c.value:g}:{c.mode}:{c.unit}" for c in clamps) or "no clamps"
    limit = f", first {args.generated_limit} generated tokens" if args.generated_limit is not None else ""
    print(f"=== steered ({label}; positions {args.positions}{limit}; seed {args.seed}) ===")
    print(texts[0].strip())
    if args.compare:
        print(f"\n=== unsteered (same seed {args.seed}) ===")
        print(texts[1].strip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m steering", description="Steer a chat model with SAE feature clamps.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="answer one prompt, optionally steered, optionally with the unsteered answer")
    gen.add_argument("prompt")
    gen.add_argument("--clamp", action="append", default=[], metavar="INDEX=VALUE[:MODE][:UNIT]",
                     help="clamp a feature; MODE clamp|add|scale (default clamp), UNIT max|raw (default max)")
    gen.add_argument("--positions", choices=("all", "prompt", "generated"), default="all")
    gen.add_argument("--generated-limit", type=int, default=None, metavar="N",
                     help="clamp only the first N generated tokens (default: all of them)")
    gen.add_argument("--compare", action="store_true", help="also print the unsteered answer from the same seed")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--temperature", type=float, default=0.7, help="0 for greedy")
    gen.add_argument("--system", default=None, help="a system message")
    add_model_arguments(gen)
    gen.set_defaults(handler=_generate)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)
