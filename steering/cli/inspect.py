"""`python -m steering inspect "TEXT"`: the SAE features active at each token of a text.

    inspect "TEXT" [--top-k K] [--feature I]... [--chat] [--summary N] [--json] [--model M] [--sae PATH]

TEXT is read as it is (after a sink token) or, with --chat, as a user
message followed by the assistant's turn (`steering.inspection`). Prints one
line per token: the token, then its most active features as
`index:activation (relative x max) label`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from steering.cli.common import add_model_arguments, load_steered
from steering.errors import SteeringError
from steering.inspection import inspect_texts
from steering.readings import InspectSpec


def run(args: argparse.Namespace) -> int:
    sm = load_steered(args)
    if sm.sae is None:
        raise SteeringError("inspection needs an SAE (not --sae none)", "sae")
    spec = InspectSpec(args.top_k, tuple(args.feature), "all").validate(sm.sae)
    text: Any = [{"role": "user", "content": args.text}] if args.chat else args.text
    (found,) = inspect_texts(sm, [text], spec, args.summary)
    tok, cat = sm.loaded.tokenizer, sm.catalogue
    label = (lambda i: f" {cat.labels[i]!r}") if cat is not None else (lambda i: "")  # noqa: E731
    if args.json:
        print(json.dumps({"tokens": [{**dataclasses.asdict(r), "token": tok.decode([r.token_id])} for r in found.readings],
                          "summary": [dataclasses.asdict(s) for s in found.summary]}, indent=2))
        return 0

    def show(v: Any) -> str:
        rel = f" ({v.relative:.2f}x)" if v.relative is not None else ""
        return f"{v.index}:{v.activation:.2f}{rel}{label(v.index)}"

    for r in found.readings:
        named = "  |  " + ", ".join(show(v) for v in r.named) if r.named else ""
        print(f"{r.position:4d} {tok.decode([r.token_id])!r:>14}  " + ", ".join(show(v) for v in r.top) + named)
    if found.summary:
        print("\nsummary (by total activation):")
        for s in found.summary:
            print(f"  {s.index:6d} total {s.total:8.2f}  max {s.max.activation:6.2f}  on {s.fires} tokens{label(s.index)}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("inspect", help="the SAE features active at each token of a text")
    p.add_argument("text")
    p.add_argument("--top-k", type=int, default=5, help="most active features shown per token")
    p.add_argument("--feature", type=int, action="append", default=[], metavar="I",
                   help="also show this feature's value at every token (repeatable)")
    p.add_argument("--chat", action="store_true", help="read TEXT as a user message in the chat template")
    p.add_argument("--summary", type=int, default=10, metavar="N", help="features in the summary (0: none)")
    p.add_argument("--json", action="store_true")
    add_model_arguments(p)
    p.set_defaults(handler=run)
