"""`python -m steering concept-search CONCEPT`: rank the SAE's features for a concept.

    concept-search CONCEPT [--limit N] [--texts FILE] [--try PROMPT [--strength S]] [--json]

Prints the ranked candidates with both scores (`steering.concepts.search`),
with the catalogue's label and top context when the SAE ships a catalogue
(whose label matches also join the candidate pool), and with --try an
auto-steered answer beside the unsteered one.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from steering.cli.common import add_model_arguments, load_steered
from steering.concepts import LABEL_CANDIDATES, AutoSteerer, find_concept_features, label_matches


def run(args: argparse.Namespace) -> int:
    sm = load_steered(args)
    extra = label_matches(sm, args.concept, max(args.limit, LABEL_CANDIDATES))
    texts = None
    if args.texts:
        with open(args.texts, encoding="utf-8") as fh:
            texts = [ln.strip() for ln in fh if ln.strip() and not ln.startswith("#")]
    found = find_concept_features(sm, args.concept, texts=texts, limit=args.limit, extra=extra)
    result = AutoSteerer(sm).steer(args.concept, args.strength) if args.try_prompt else None
    answers = None
    if result is not None:
        answers = sm.chat([{"role": "user", "content": args.try_prompt}], result.spec, max_tokens=args.max_tokens,
                          seed=args.seed, compare=True)
    catalogue = sm.catalogue
    labels = {c.index: catalogue.feature(c.index) for c in found} if catalogue is not None else {}
    if args.json:
        print(json.dumps({"candidates": [{**c.to_dict(), **({"catalogue": labels[c.index].to_dict()}
                                                           if c.index in labels else {})} for c in found],
                          "auto_steer": result.to_dict() if result else None,
                          "answers": {"steered": answers[0], "baseline": answers[1]} if answers else None}, indent=2))
        return 0
    print(f"{'feature':>8} {'score':>7} {'spec':>7} {'fireC':>6} {'fireN':>6} {'onword':>6} {'rank':>6}  promotes")
    for c in found:
        ws = "   n/a" if c.word_share is None else f"{c.word_share:6.2f}"
        print(f"{c.index:8d} {c.score:7.3f} {c.specificity:7.3f} {c.concept_fire_rate:6.2f} {c.neutral_fire_rate:6.2f} "
              f"{ws} {c.logit_rank:6d}  {' | '.join(repr(t) for t in c.promoted_tokens)}")
        info = labels.get(c.index)
        if info is not None:
            print(f"{'':8} label: {info.label!r}" + (f"; e.g. {info.contexts[0].text!r}" if info.contexts else ""))
    if result is not None and answers is not None:
        print(f"\nauto-steer: {result.rationale}")
        print(f"steered:  {answers[0].strip()!r}\nbaseline: {answers[1].strip()!r}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("concept-search", help="rank SAE features for a concept (specificity x logit effect)")
    p.add_argument("concept")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--texts", default=None, help="file of concept texts, one a line (default: built-in templates)")
    p.add_argument("--try", dest="try_prompt", default=None, metavar="PROMPT",
                   help="also auto-steer this prompt and print the steered and unsteered answers")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    add_model_arguments(p)
    p.set_defaults(handler=run)
