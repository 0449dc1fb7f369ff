"""`python -m steering attribute "PROMPT"`: which SAE features drove the model's next token.

    attribute "PROMPT" [--target " Paris"] [--contrast " London"] [--top 20] [--raw] [--json] [--model M] [--sae PATH]
    attribute "PROMPT" --remove 27:1957 --remove 27:8901 ...     the next token with those nodes removed

PROMPT is a user message in the chat template (the target is then the
assistant's first token), or with --raw a plain text after a sink token (the
target is its next token). Prints the target's logit and probability, then
the top nodes (`steering.attribution`): position, token, feature (or
`error`), activation, score (the estimated drop of the target's logit if the
node were removed) and share of all nodes' |score|.

    eval-attribution [--prompts FILE] [--top 10] [--seed 0] [--verbose]

checks the scores against real removals on the shipped prompts
(`steering.attribution.evaluate`) and prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from steering.attribution import attribute, logits_without
from steering.cli.common import add_model_arguments, load_steered
from steering.tokens import sink_token_id


def run(args: argparse.Namespace) -> int:
    sm = load_steered(args)
    tok = sm.loaded.tokenizer
    if args.raw:
        ids = [sink_token_id(tok), *tok(args.prompt, add_special_tokens=False)["input_ids"]]
    else:
        ids = list(sm.prompt_ids([{"role": "user", "content": args.prompt}]))
    if args.remove:
        return show_removal(sm, ids, args.remove, args.json)
    result = attribute(sm, ids, args.target, args.contrast, args.top)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    t, c = result.target, result.contrast
    against = f" minus {c.token!r} ({c.logit:.2f})" if c else ""
    print(f"target {t.token!r}: logit {t.logit:.2f}, probability {t.probability:.3f}{against}; "
          f"{result.prompt_tokens} tokens, {result.active_features} active features")
    print(f"share of |score| in features {result.feature_share:.1%}, error nodes {result.error_share:.1%}, "
          f"the sink (position 0) {result.sink_share:.1%}")
    for n in result.nodes:
        what = n.kind if n.feature is None else str(n.feature)
        label = f"  {n.label!r}" if n.label else ""
        print(f"{n.position:4d} {n.token!r:>14} {what:>7}  act {n.activation:7.2f}  score {n.score:+8.3f}  "
              f"{n.share:6.1%}{label}")
    return 0


def _node(text: str) -> tuple[int, int | str | None]:
    """POSITION:FEATURE, POSITION:error or 0:sink."""
    pos, _, what = text.partition(":")
    try:
        return int(pos), ("sink" if what == "sink" else None if what == "error" else int(what))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected POSITION:FEATURE, POSITION:error or 0:sink") from None


def show_removal(sm: Any, ids: list[int], nodes: list, as_json: bool, k: int = 5) -> int:
    """The next token's top k with and without `nodes` (the prediction a removal tests)."""
    tok = sm.loaded.tokenizer
    out = {}
    for name, removed in (("plain", []), ("removed", nodes)):
        probs = torch.softmax(logits_without(sm, ids, removed), -1)
        top = probs.topk(k)
        out[name] = [{"token": tok.decode([int(i)]), "probability": round(float(v), 4)} for v, i in zip(top.values, top.indices)]
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        for name, rows in out.items():
            print(f"{name:>8}: " + ", ".join(f"{r['token']!r} {r['probability']:.3f}" for r in rows))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from steering.attribution.evaluate import PROMPTS, evaluate_attribution, load_prompts

    sm = load_steered(args)
    check = evaluate_attribution(sm, load_prompts(args.prompts or PROMPTS), args.top, args.seed)
    out = check.to_dict()
    if not args.verbose:
        out.pop("per_prompt")
    print(json.dumps(out))
    return 0


def add_parsers(sub: Any) -> None:
    add_parser(sub)
    p = sub.add_parser("eval-attribution", help="check attribution scores against real removals (JSON last line)")
    p.add_argument("--prompts", type=Path, default=None, help="PROMPT|TARGET lines (default: the shipped set)")
    p.add_argument("--top", type=int, default=10, help="nodes per prompt checked one at a time")
    p.add_argument("--seed", type=int, default=0, help="for the random nodes of the top-5 comparison")
    p.add_argument("--verbose", action="store_true", help="also each prompt's figures")
    add_model_arguments(p)
    p.set_defaults(handler=run_eval)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("attribute", help="which SAE features drove the next token (activation x gradient)")
    p.add_argument("prompt")
    p.add_argument("--target", default=None, help="a token string, e.g. ' Paris' (default: the model's own next token)")
    p.add_argument("--contrast", default=None, help="attribute the target's logit minus this token's")
    p.add_argument("--top", type=int, default=20, help="nodes shown (1..100)")
    p.add_argument("--raw", action="store_true", help="read PROMPT as plain text, not a chat message")
    p.add_argument("--remove", type=_node, action="append", default=[], metavar="POS:FEATURE",
                   help="instead: the next token's top 5 with these nodes removed (repeatable; POS:error, 0:sink)")
    p.add_argument("--json", action="store_true")
    add_model_arguments(p)
    p.set_defaults(handler=run)
