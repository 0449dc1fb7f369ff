"""`python -m steering attribute "PROMPT"`: which SAE features drove the model's next token.

    attribute "PROMPT" [--target " Paris"] [--contrast " London"] [--top 20] [--raw | --answer-prefix TEXT] [--json]
    attribute "PROMPT" --remove 27:1957 --remove 27:8901 ...     the next token with those nodes removed
    attribute "PROMPT" --graph [--png G.png] [--save G.json] [--circuit-tracer CT.json]
              [--max-feature-nodes 16] [--node-threshold 0.8] [--edge-threshold 0.98]

--graph builds the attribution graph across every shipped SAE of the model
(`steering.attribution.graph`): its nodes per layer with their influence,
the strongest edges, and optionally its picture (PNG), its JSON and
circuit-tracer's graph file for that viewer.

PROMPT is a user message in the chat template (the target is then the
assistant's first token, or the token after --answer-prefix, the start of
the answer), or with --raw a plain text after a sink token (the target is
its next token). Prints the target's logit and probability, then
the top nodes (`steering.attribution`): position, token, feature (or
`error`), activation, score (the estimated drop of the target's logit if the
node were removed) and share of all nodes' |score|.

    eval-attribution [--prompts FILE] [--top 10] [--seed 0] [--verbose] [--graph]

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
        if args.answer_prefix:
            ids += tok(args.answer_prefix, add_special_tokens=False)["input_ids"]
    if args.remove:
        return show_removal(sm, ids, args.remove, args.json)
    if args.graph:
        return show_graph(sm, ids, args)
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
    if result.suggestions:
        print("to lower it, clamp to 0 everywhere (estimated drop, first order): " + ", ".join(
            f"{s.feature} ({s.estimated_drop:+.2f})" for s in result.suggestions))
        print('  "steering": ' + json.dumps(result.suggested_steering()))
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


def show_graph(sm: Any, ids: list[int], args: argparse.Namespace) -> int:
    from steering.attribution.export import circuit_tracer_graph
    from steering.attribution.graph import graph_layers
    from steering.attribution.tracing import attribution_graph
    from steering.attribution.picture import draw_graph

    graph = attribution_graph(sm.loaded.model, sm.loaded.tokenizer, graph_layers(sm), ids, args.target, args.contrast,
                              args.max_feature_nodes, args.node_threshold, args.edge_threshold)
    if args.save:
        Path(args.save).write_text(json.dumps(graph.to_dict(), indent=1))
    if args.circuit_tracer:
        n_layers = int(sm.loaded.model.config.num_hidden_layers)
        ct = circuit_tracer_graph(graph, n_layers, slug=Path(args.circuit_tracer).stem, scan=sm.model_id,
                                  prompt=args.prompt)
        Path(args.circuit_tracer).write_text(json.dumps(ct))
    if args.png:
        draw_graph(graph, args.png)
    if args.json:
        print(json.dumps(graph.to_dict(), indent=1))
        return 0
    t = graph.target
    print(f"target {t.token!r}: logit {t.logit:.2f}, probability {t.probability:.3f}; layers "
          f"{', '.join(map(str, graph.layers))}; {len(graph.nodes)} nodes and {len(graph.edges)} edges hold "
          f"{graph.node_threshold:.0%} / {graph.edge_threshold:.0%}; error nodes hold {graph.error_influence:.1%} "
          f"of the influence; {'exact' if graph.exact else 'approximate'} direct effects; "
          f"built in {graph.stats['compute_seconds']:.1f} s ({int(graph.stats['steps'])} steps)")
    for level in (*reversed(graph.layers), None):
        nodes = [n for n in graph.nodes if n.layer == level and n.kind != "logit"]
        print(f"-- {'layer ' + str(level) if level is not None else 'tokens'}"
              + (f" (expanded features hold {graph.coverage[level]:.0%})" if level is not None else ""))
        for n in nodes[:args.top]:
            what = n.kind if n.feature is None else str(n.feature)
            label = f"  {n.label!r}" if n.label else ""
            print(f"{n.position:4d} {n.token!r:>14} {what:>7}  influence {n.influence:6.1%}{label}")
    for e in sorted(graph.edges, key=lambda e: -abs(e.weight))[:args.top]:
        print(f"edge {e.source:>14} -> {e.target:<14} weight {e.weight:+8.3f}  ({e.share:.0%} of the target's input)")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from steering.attribution.evaluate import PROMPTS, evaluate_attribution, load_prompts

    sm = load_steered(args)
    if args.graph:
        from steering.attribution.evaluate import evaluate_graph_edges

        print(json.dumps(evaluate_graph_edges(sm, load_prompts(args.prompts or PROMPTS), args.top).to_dict()))
        return 0
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
    p.add_argument("--graph", action="store_true",
                   help="instead: check graph edges (feature -> feature) against real removals on 20 prompts")
    add_model_arguments(p)
    p.set_defaults(handler=run_eval)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("attribute", help="which SAE features drove the next token (activation x gradient)")
    p.add_argument("prompt")
    p.add_argument("--target", default=None, help="a token string, e.g. ' Paris' (default: the model's own next token)")
    p.add_argument("--contrast", default=None, help="attribute the target's logit minus this token's")
    p.add_argument("--top", type=int, default=20, help="nodes shown (1..100)")
    p.add_argument("--raw", action="store_true", help="read PROMPT as plain text, not a chat message")
    p.add_argument("--answer-prefix", default=None, help="the start of the assistant's answer: the target follows it")
    p.add_argument("--remove", type=_node, action="append", default=[], metavar="POS:FEATURE",
                   help="instead: the next token's top 5 with these nodes removed (repeatable; POS:error, 0:sink)")
    p.add_argument("--graph", action="store_true", help="instead: the attribution graph across the shipped SAEs' layers")
    p.add_argument("--max-feature-nodes", type=int, default=16, help="features expanded per layer (with --graph)")
    p.add_argument("--node-threshold", type=float, default=0.8, help="share of influence the kept nodes hold")
    p.add_argument("--edge-threshold", type=float, default=0.98, help="share of edge influence the kept edges hold")
    p.add_argument("--png", default=None, help="with --graph: draw it to this PNG")
    p.add_argument("--save", default=None, help="with --graph: write its JSON here")
    p.add_argument("--circuit-tracer", default=None, help="with --graph: write circuit-tracer's graph file here")
    p.add_argument("--json", action="store_true")
    add_model_arguments(p)
    p.set_defaults(handler=run)
