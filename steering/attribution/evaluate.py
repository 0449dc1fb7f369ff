"""Are attribution scores true? Each estimate checked against a real removal.

For each prompt (PROMPT|TARGET, `load_prompts`) that the model completes
with TARGET as its most likely next token:

    estimated(node) = the node's score (`attribute`: activation x gradient)
    measured(node)  = metric - metric with the node removed (`metric_without`,
                      everything else at the SAE's layer held)

for the top `top` feature and error nodes by |score| (the sink, position 0,
is left out: removing it breaks the model rather than a mechanism). Reported:

    spearman           rank correlation of estimated and measured over every
                       prompt's nodes, pooled
    top5_beats_random  share of prompts where removing the top 5 nodes by score
                       (the ones that push the target up) together lowers the
                       metric more than removing 5 random active feature nodes
                       (seeded; positions > 0)
    error_share        mean share of |score| in error nodes

`evaluate_graph_edges` does the same for a graph's edges: for each answered
prompt, the `top` feature-to-feature edges by |weight| of its attribution
graph (`steering.attribution.tracing`), estimated = the edge's weight (a
direct effect in the linearised model), measured = the target feature's
encoder pre-activation minus its value with the source feature removed at
its layer (everything else free: attention, norms and gates respond, and
the effect also flows through nodes the graph holds fixed). Reported:
spearman, sign_agreement and the median of measured / estimated.
"""

from __future__ import annotations

import random
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from steering.attribution.features import attribute, metric_without, removal_edit
from steering.attribution.graph import graph_layers
from steering.attribution.tracing import attribution_graph
from steering.hooks import activations_at, edit_site
from steering.inspection import token_rows

if TYPE_CHECKING:
    from steering.steered_model import SteeredModel

PROMPTS = Path(__file__).resolve().parent.parent / "data" / "attribution" / "prompts.txt"


def load_prompts(path: Path = PROMPTS) -> list[tuple[str, str]]:
    """(prompt, target) pairs from PROMPT|TARGET lines (# comments and blank lines skipped)."""
    pairs = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            prompt, _, target = line.partition("|")
            pairs.append((prompt, target))
    return pairs


def _ranks(values: Sequence[float]) -> torch.Tensor:
    x = torch.tensor(list(values), dtype=torch.float64)
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    for v in x.unique():  # ties share their mean rank
        same = x == v
        ranks[same] = ranks[same].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()).clamp(min=1e-12))


@dataclass
class AttributionCheck:
    n_prompts: int
    n_candidates: int
    spearman: float
    top5_beats_random: float
    error_share: float
    per_prompt: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluate_attribution(sm: "SteeredModel", prompts: Sequence[tuple[str, str]], top: int = 10,
                         seed: int = 0) -> AttributionCheck:
    rng = random.Random(seed)
    estimated: list[float] = []
    measured: list[float] = []
    beats, errors, rows = 0, [], []
    kept = 0
    for prompt, target in prompts:
        (ids,) = token_rows(sm, [prompt])
        result = attribute(sm, ids, target, top_k=min(100, top + 1))
        if result.top_token_id != result.target.token_id:
            continue  # the model does not answer this one: nothing to explain
        kept += 1
        tid = result.target.token_id
        nodes = [n for n in result.nodes if n.kind != "sink"][:top]
        for n in nodes:
            estimated.append(n.score)
            measured.append(result.metric - metric_without(sm, ids, [(n.position, n.feature)], tid))
        pushing = sorted((n for n in result.nodes if n.kind != "sink" and n.score > 0), key=lambda n: -n.score)[:5]
        top_drop = result.metric - metric_without(sm, ids, [(n.position, n.feature) for n in pushing], tid)
        f = _active(sm, ids)
        pick = rng.sample(f, min(5, len(f)))
        random_drop = result.metric - metric_without(sm, ids, pick, tid)
        beats += top_drop > random_drop
        errors.append(result.error_share)
        rows.append({"prompt": prompt, "target": target, "metric": round(result.metric, 3),
                     "top5_drop": round(top_drop, 3), "random5_drop": round(random_drop, 3)})
    return AttributionCheck(kept, len(prompts), spearman(estimated, measured) if len(estimated) > 1 else float("nan"),
                            beats / kept if kept else float("nan"), sum(errors) / len(errors) if errors else float("nan"),
                            rows)


def _active(sm: "SteeredModel", ids: Sequence[int]) -> list[tuple[int, int]]:
    """(position, feature) pairs with f > 0 at positions > 0."""
    sae = sm.sae
    ((_, hidden),) = list(activations_at(sm.loaded.model, sae.cfg.hook_layer, sae.cfg.hook_site, [list(ids)], 1))
    with torch.no_grad():
        f = sae.encode(hidden.to(sae.W_dec.dtype))
    return [(t + 1, i) for t, i in (f[1:] > 0).nonzero().tolist()]


@dataclass
class EdgeCheck:
    n_prompts: int
    n_edges: int
    spearman: float
    sign_agreement: float
    median_ratio: float  # measured / estimated

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluate_graph_edges(sm: "SteeredModel", prompts: Sequence[tuple[str, str]], top: int = 10,
                         max_prompts: int = 20) -> EdgeCheck:
    """The module docstring's edge check on the first `max_prompts` answered prompts."""
    layers = graph_layers(sm)
    saes = {g.layer: g.sae for g in layers}
    estimated: list[float] = []
    measured: list[float] = []
    kept = 0
    for prompt, target in prompts:
        if kept == max_prompts:
            break
        (ids,) = token_rows(sm, [prompt])
        graph = attribution_graph(sm.loaded.model, sm.loaded.tokenizer, layers, ids, target)
        if graph.target.probability + 1e-6 < _top_probability(sm, ids):
            continue  # the model does not answer this one
        kept += 1
        nodes = {n.id: n for n in graph.nodes}
        edges = [e for e in graph.edges if nodes[e.source].kind == "feature" and nodes[e.target].kind == "feature"]
        for e in sorted(edges, key=lambda e: -abs(e.weight))[:top]:
            u, d = nodes[e.source], nodes[e.target]
            base = _pre_activation(sm, saes, ids, None, d)
            estimated.append(e.weight)
            measured.append(base - _pre_activation(sm, saes, ids, u, d))
    signs = [(a > 0) == (b > 0) for a, b in zip(estimated, measured)]
    ratios = sorted(b / a for a, b in zip(estimated, measured) if a != 0)
    return EdgeCheck(kept, len(estimated), spearman(estimated, measured) if len(estimated) > 1 else float("nan"),
                     sum(signs) / len(signs) if signs else float("nan"),
                     ratios[len(ratios) // 2] if ratios else float("nan"))


def _top_probability(sm: "SteeredModel", ids: Sequence[int]) -> float:
    with torch.no_grad():
        logits = sm.loaded.model(input_ids=torch.tensor([list(ids)])).logits[0, -1].float()
    return float(torch.softmax(logits, -1).max())


def _pre_activation(sm: "SteeredModel", saes: dict, ids: Sequence[int], removed: Any, node: Any) -> float:
    """`node`'s encoder pre-activation in a plain forward, with the feature node `removed` set to 0 at its
    layer (its SAE's error kept), or with nothing removed (None)."""
    out: dict[str, float] = {}
    reader = saes[node.layer]

    def read(hidden: torch.Tensor) -> None:
        h = hidden[0, node.position].to(reader.W_dec.dtype)
        out["pre"] = float(reader.pre_activations(reader.normalize(h)[0])[node.feature])

    model = sm.loaded.model
    with torch.no_grad(), ExitStack() as stack:
        if removed is not None:
            edit = removal_edit(saes[removed.layer], [(removed.position, removed.feature)])
            stack.enter_context(edit_site(model, removed.layer, "resid_post", edit))
        stack.enter_context(edit_site(model, node.layer, "resid_post", read))
        model(input_ids=torch.tensor([list(ids)]))
    return out["pre"]
