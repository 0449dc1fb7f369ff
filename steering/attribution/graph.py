"""Attribution graphs across SAE layers: which features drove which, down to the tokens, up to the output.

Splice. SAEs sit at decoder layers l_1 < ... < l_n (resid_post). At each, the
activation h [T, d] is split into fresh leaves, f = encode(h) [T, d_sae] and
e = h - decode(f) [T, d], and the model runs on from decode(f) + e (= h: the
forward is unchanged). The encoder pre-activations p_i = W_enc^T (norm(h) -
b_dec) + b_enc [T, d_sae] are kept as functions of the previous layer's
leaves; the first layer's are functions of the token embeddings x [T, d],
also leaves. The residual stream at l_{i+1} depends on nothing but the
leaves at l_i, so edges join adjacent layers only.

Edges. With the model linearised (`steering.attribution.linearise`:
attention patterns, norm scales and MLP gates held at this prompt's
values), every p_i and the target metric m (a logit, or a difference of two)
are linear in the previous layer's leaves plus a constant (the decoders'
b_dec and the encoders' biases carried through):

    p_d = sum_u w(u -> d) + c_d,      w(u -> d) = value(u) * dp_d / dvalue(u)

with u a feature f_t[k], an error node e_t (value and gradient dotted), the
sink (position 0's features and error as one node: its activation is an
attention sink far outside what an SAE reads) or a token embedding x_t.
One backward per target node gives all its incoming edges: the direct
effect of each source through the model in between, exact for the
linearised model (the tests check the identity above).

Influence. m has influence 1; a node d whose inputs are computed passes on
infl(u) += infl(d) * |w(u -> d)| / sum_u' |w(u' -> d)|. The logit's inputs
are all computed; going down, each layer's `max_feature_nodes` features of
highest influence get theirs (one backward each, batched); the layer's
other nodes keep what they received and have no inputs in the graph.
`coverage[l]` is the share of layer l's influence held by the expanded
features (error nodes and the sink are inputs, as in circuit tracing).

Pruning (as circuit-tracer does): keep the nodes of highest influence that
together hold `node_threshold` of it all (default 0.8, every kind
competing); among edges between kept nodes, those of highest
|w(u -> d)| / sum_u' |w(u' -> d)| * infl(d) that hold `edge_threshold` of
that total (default 0.98); then drop nodes left without an edge. The logit is
always kept.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from steering.attribution.features import MAX_ATTRIBUTION_TOKENS, TargetLogit, token_id_of
from steering.attribution.linearise import frozen_nonlinearities
from steering.errors import SteeringError
from steering.hooks import edit_site
from steering.sae.autoencoder import NormInfo, SparseAutoencoder
from steering.sae.catalogue import Catalogue

MAX_FEATURE_NODES = 64  # per layer: the bound on backward passes a request may ask for
LOGIT = ("logit",)
Key = tuple  # ("feature", layer, pos, k) | ("error", layer, pos) | ("sink", layer) | ("token", pos) | LOGIT


@dataclass(frozen=True)
class GraphLayer:
    """One SAE of the graph and its catalogue (labels), if it has one."""

    sae: SparseAutoencoder
    catalogue: Catalogue | None = None
    name: str = ""

    @property
    def layer(self) -> int:
        return self.sae.cfg.hook_layer


@dataclass(frozen=True)
class GraphNode:
    id: str
    kind: str  # feature, error, sink, token, logit
    layer: int | None  # the SAE's decoder layer; None for tokens and the logit
    position: int
    token: str
    feature: int | None
    activation: float  # f_t[k]; |e_t| for an error; |h_0| for the sink; |x_t| for a token; the metric for the logit
    influence: float
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class GraphEdge:
    source: str
    target: str
    weight: float  # w(u -> d): the direct effect on d's pre-activation (or on the metric)
    share: float  # |w| / the sum of |w| over d's inputs

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class AttributionGraph:
    tokens: tuple[str, ...]
    token_ids: tuple[int, ...]
    layers: tuple[int, ...]
    sae_names: tuple[str, ...]
    target: TargetLogit
    contrast: TargetLogit | None
    metric: float
    nodes: tuple[GraphNode, ...]  # pruned, strongest influence first (the logit first)
    edges: tuple[GraphEdge, ...]
    node_threshold: float
    edge_threshold: float
    coverage: dict[int, float]  # per layer: the share of its influence in expanded features
    error_influence: float  # the share of all influence (logit left out) in error nodes
    exact: bool  # every nonlinearity was held: edges are exact direct effects (`Linearisation.exact`)
    computed_nodes: int = 0  # nodes whose inputs were computed (backward passes), the logit included
    stats: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("nodes", "edges", "target", "contrast")}
        out.update(target=self.target.__dict__, contrast=self.contrast.__dict__ if self.contrast else None,
                   nodes=[n.to_dict() for n in self.nodes], edges=[e.to_dict() for e in self.edges],
                   tokens=list(self.tokens), token_ids=list(self.token_ids), layers=list(self.layers),
                   sae_names=list(self.sae_names), coverage={str(k): v for k, v in self.coverage.items()})
        return out


def node_id(key: Key) -> str:
    """A node's id: `15/1957@27` (feature), `15/error@27`, `15/sink`, `token@27`, `logit`."""
    kind = key[0]
    if kind == "feature":
        return f"{key[1]}/{key[3]}@{key[2]}"
    if kind == "error":
        return f"{key[1]}/error@{key[2]}"
    if kind == "sink":
        return f"{key[1]}/sink"
    if kind == "token":
        return f"token@{key[1]}"
    return "logit"


# ------------------------------------------------------------------ the spliced forward
@dataclass
class _Site:
    """One layer's leaves (f [T, d_sae], e [T, d]) and pre-activations p [T, d_sae] (a function of the layer before)."""

    layer: int
    f: Tensor | None = None
    e: Tensor | None = None
    pre: Tensor | None = None
    h0_norm: float = 0.0


def _held_normalize(sae: SparseAutoencoder, h: Tensor) -> tuple[Tensor, NormInfo]:
    """sae.normalize with a per-token scale and shift held (a layer-norm input is then linear too)."""
    x_n, info = sae.normalize(h)
    if isinstance(info.scale, Tensor) or isinstance(info.shift, Tensor):
        info = NormInfo(info.scale.detach() if isinstance(info.scale, Tensor) else info.scale,
                        info.shift.detach() if isinstance(info.shift, Tensor) else info.shift)
        x_n = (h - info.shift) * info.scale
    return x_n, info


def _splicer(sae: SparseAutoencoder, site: _Site) -> Callable[[Tensor], Tensor]:
    def splice(hidden: Tensor) -> Tensor:
        h = hidden[0].to(sae.W_dec.dtype)
        x_n, info = _held_normalize(sae, h)
        site.pre = sae.pre_activations(x_n)
        f = sae.activate(site.pre.detach()).requires_grad_(True)
        recon = sae.decode(f, info)
        e = (h.detach() - recon.detach()).requires_grad_(True)
        site.f, site.e, site.h0_norm = f, e, float(h[0].detach().norm())
        return (recon + e).to(hidden.dtype)[None]
    return splice


def _embedding_leaf(store: dict[str, Tensor]) -> Callable[..., Tensor]:
    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        store["x"] = output.detach().requires_grad_(True)
        return store["x"]
    return hook


# ------------------------------------------------------------------ edges and influence
def _source_weights(site: _Site | None, x: Tensor, grads: Sequence[Tensor]) -> dict[Key, float]:
    """The nonzero w(u -> d) of every source u at `site` (or the token embeddings x when site is None),
    given d's gradients with respect to the leaves ([f, e] or [x])."""
    if site is None:
        (g,) = grads
        w = (x.detach() * g).sum(-1).flatten().double().cpu()  # x, g: [1, T, d]
        return {("token", t): float(w[t]) for t in range(len(w)) if w[t] != 0}
    g_f, g_e = grads
    wf = (site.f.detach() * g_f).double().cpu()  # [T, d_sae]
    we = (site.e.detach() * g_e).sum(-1).double().cpu()  # [T]
    out: dict[Key, float] = {}
    sink = float(wf[0].sum() + we[0])
    if sink != 0:
        out[("sink", site.layer)] = sink
    pos, feat = torch.nonzero(wf[1:], as_tuple=True)
    for t, k in zip((pos + 1).tolist(), feat.tolist()):
        out[("feature", site.layer, t, k)] = float(wf[t, k])
    for t in range(1, len(we)):
        if we[t] != 0:
            out[("error", site.layer, t)] = float(we[t])
    return out


def _pass_influence(influence: dict[Key, float], target: Key, sources: dict[Key, float]) -> None:
    total = sum(abs(w) for w in sources.values())
    if total == 0:
        return
    for key, w in sources.items():
        influence[key] += influence[target] * abs(w) / total


def _batched_grads(outputs: Sequence[Tensor], inputs: Sequence[Tensor]) -> Iterator[tuple[Tensor, ...]]:
    """d output / d inputs for each scalar output (one backward each; the graph is kept)."""
    for out in outputs:
        yield torch.autograd.grad(out, list(inputs), retain_graph=True, allow_unused=True)


# ------------------------------------------------------------------ pruning
def prune(influence: dict[Key, float], edges: dict[Key, dict[Key, float]], node_threshold: float,
          edge_threshold: float) -> tuple[set[Key], list[tuple[Key, Key, float, float]]]:
    """(kept nodes, kept edges as (source, target, weight, share)) by the rule in the module docstring."""
    ranked = sorted((k for k in influence if k != LOGIT and influence[k] > 0), key=lambda k: -influence[k])
    total = sum(influence[k] for k in ranked)
    kept: set[Key] = {LOGIT}
    held = 0.0
    for key in ranked:
        if held >= node_threshold * total:
            break
        kept.add(key)
        held += influence[key]
    scored = []
    for target, sources in edges.items():
        if target not in kept:
            continue
        norm = sum(abs(w) for w in sources.values()) or 1.0
        for source, w in sources.items():
            if source in kept:
                scored.append((abs(w) / norm * influence[target], source, target, w, abs(w) / norm))
    scored.sort(key=lambda s: -s[0])
    edge_total = sum(s[0] for s in scored)
    kept_edges, held = [], 0.0
    for score, source, target, w, share in scored:
        if held >= edge_threshold * edge_total:
            break
        kept_edges.append((source, target, w, share))
        held += score
    touched = {LOGIT} | {s for s, *_ in kept_edges} | {t for _, t, *_ in kept_edges}
    return kept & touched, kept_edges


# ------------------------------------------------------------------ the graph
def attribution_graph(model: nn.Module, tokenizer: Any, layers: Sequence[GraphLayer], ids: Sequence[int],
                      target: str | None = None, contrast: str | None = None, max_feature_nodes: int = 16,
                      node_threshold: float = 0.8, edge_threshold: float = 0.98) -> AttributionGraph:
    """The attribution graph of the next token after `ids` over the SAEs in `layers` (module docstring).

    Raises SteeringError naming `messages`, `target`, `contrast`, `max_feature_nodes`, `node_threshold`
    or `edge_threshold`.
    """
    _check(layers, ids, max_feature_nodes, node_threshold, edge_threshold)
    layers = sorted(layers, key=lambda g: g.layer)
    target_id = token_id_of(tokenizer, target, "target") if target is not None else None
    contrast_id = token_id_of(tokenizer, contrast, "contrast") if contrast is not None else None
    sites = [_Site(g.layer) for g in layers]
    emb: dict[str, Tensor] = {}
    device = next(model.parameters()).device
    with torch.inference_mode(False), torch.enable_grad(), ExitStack() as stack:
        held = stack.enter_context(frozen_nonlinearities(model))
        handle = model.get_input_embeddings().register_forward_hook(_embedding_leaf(emb))
        stack.callback(handle.remove)
        for g, site in zip(layers, sites):
            stack.enter_context(edit_site(model, g.layer, "resid_post", _splicer(g.sae, site)))
        logits = model(input_ids=torch.tensor([list(ids)], device=device), use_cache=False).logits[0, -1]
        if target_id is None:
            target_id = int(logits.argmax())
        metric = logits[target_id] - (logits[contrast_id] if contrast_id is not None else 0.0)

        influence: dict[Key, float] = defaultdict(float)
        influence[LOGIT] = 1.0
        edges: dict[Key, dict[Key, float]] = {}
        last = sites[-1]
        (grads,) = _batched_grads([metric], [last.f, last.e])
        edges[LOGIT] = _source_weights(last, emb["x"], grads)
        _pass_influence(influence, LOGIT, edges[LOGIT])
        coverage: dict[int, float] = {}
        for i in reversed(range(len(sites))):
            site, below = sites[i], (sites[i - 1] if i else None)
            candidates = sorted((k for k in influence if k[0] == "feature" and k[1] == site.layer),
                                key=lambda k: -influence[k])[:max_feature_nodes]
            layer_total = sum(v for k, v in influence.items() if k[0] != "token" and k != LOGIT and k[1] == site.layer)
            coverage[site.layer] = sum(influence[k] for k in candidates) / layer_total if layer_total else 0.0
            inputs = [below.f, below.e] if below is not None else [emb["x"]]
            outputs = [site.pre[k[2], k[3]] for k in candidates]
            for key, grads in zip(candidates, _batched_grads(outputs, inputs)):
                edges[key] = _source_weights(below, emb["x"], grads)
                _pass_influence(influence, key, edges[key])
        metric_value = float(metric.detach())
    logits = logits.detach().float()
    kept, kept_edges = prune(influence, edges, node_threshold, edge_threshold)
    probs = torch.softmax(logits, -1)

    def logit_of(i: int) -> TargetLogit:
        return TargetLogit(tokenizer.decode([i]), i, float(logits[i]), float(probs[i]))

    by_layer = {g.layer: (g, s) for g, s in zip(layers, sites)}
    token_texts = tuple(tokenizer.decode([i]) for i in ids)
    nodes = [_node(k, influence[k], by_layer, token_texts, emb["x"], metric_value, logit_of(target_id))
             for k in sorted(kept, key=lambda k: (k != LOGIT, -influence[k]))]
    non_logit = sum(v for k, v in influence.items() if k != LOGIT)
    return AttributionGraph(
        tokens=token_texts, token_ids=tuple(int(i) for i in ids), layers=tuple(g.layer for g in layers),
        sae_names=tuple(g.name for g in layers), target=logit_of(target_id),
        contrast=logit_of(contrast_id) if contrast_id is not None else None, metric=metric_value,
        nodes=tuple(nodes),
        edges=tuple(GraphEdge(node_id(s), node_id(t), w, share) for s, t, w, share in kept_edges),
        node_threshold=node_threshold, edge_threshold=edge_threshold, coverage=coverage,
        error_influence=sum(v for k, v in influence.items() if k[0] == "error") / non_logit if non_logit else 0.0,
        exact=held.exact, computed_nodes=len(edges),
        stats={"sources_with_influence": float(sum(1 for k in influence if k != LOGIT)), "edges_computed":
               float(sum(len(v) for v in edges.values()))})


def _node(key: Key, infl: float, by_layer: dict[int, tuple[GraphLayer, _Site]], tokens: tuple[str, ...],
          x: Tensor, metric: float, target: TargetLogit) -> GraphNode:
    kind = key[0]
    if kind == "logit":
        return GraphNode("logit", "logit", None, len(tokens) - 1, target.token, target.token_id, metric, 1.0)
    if kind == "token":
        t = key[1]
        return GraphNode(node_id(key), "token", None, t, tokens[t], None, float(x[0, t].detach().norm()), infl)
    g, site = by_layer[key[1]]
    if kind == "sink":
        return GraphNode(node_id(key), "sink", key[1], 0, tokens[0], None, site.h0_norm, infl)
    t = key[2]
    if kind == "error":
        return GraphNode(node_id(key), "error", key[1], t, tokens[t], None, float(site.e[t].norm()), infl)
    k = key[3]
    cat = g.catalogue
    label = cat.labels[k] if cat is not None and k < len(cat) else None
    return GraphNode(node_id(key), "feature", key[1], t, tokens[t], k, float(site.f[t, k]), infl, label)


def _check(layers: Sequence[GraphLayer], ids: Sequence[int], max_feature_nodes: int, node_threshold: float,
           edge_threshold: float) -> None:
    if not layers:
        raise SteeringError("no SAE is loaded: there are no features to build a graph of", "sae")
    seen = [g.layer for g in layers]
    if len(set(seen)) != len(seen):
        raise SteeringError(f"two SAEs at one layer ({sorted(seen)}): a graph takes one SAE per layer", "sae")
    for g in layers:
        if g.sae.cfg.hook_site != "resid_post":
            raise SteeringError(f"the SAE at layer {g.layer} reads {g.sae.cfg.hook_site}; graphs take resid_post SAEs",
                                "sae")
    if not ids:
        raise SteeringError("the prompt is empty", "messages")
    if len(ids) > MAX_ATTRIBUTION_TOKENS:
        raise SteeringError(f"the prompt has {len(ids)} tokens; at most {MAX_ATTRIBUTION_TOKENS} are attributed",
                            "messages")
    if isinstance(max_feature_nodes, bool) or not isinstance(max_feature_nodes, int) \
            or not 1 <= max_feature_nodes <= MAX_FEATURE_NODES:
        raise SteeringError(f"must be an integer in 1..{MAX_FEATURE_NODES}", "max_feature_nodes")
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise SteeringError("must be a number in (0, 1]", name)
