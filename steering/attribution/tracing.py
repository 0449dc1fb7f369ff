"""Tracing an attribution graph across SAE layers: a spliced forward, then one backward per expanded node.

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
highest influence get theirs (backwards batched with vmap); the layer's
other nodes keep what they received and have no inputs in the graph.
`coverage[l]` is the share of layer l's influence held by the expanded
features (error nodes and the sink are inputs, as in circuit tracing).
Then the graph is pruned (`steering.attribution.graph.prune`).

In steps. `GraphBuild.step()` does one short piece (the forward, the
logit's backward, or one chunk of backwards: at most 8, fewer for a long
prompt, so that a chunk covers about 512 token positions) with its own grad
mode and hooks, so a server runs the steps as calls between decoding steps
(the graph of tensors is kept between them; no hook or grad mode outlives a
step). `attribution_graph` runs them all.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from steering.attribution.features import TargetLogit, check_prompt, token_id_of
from steering.attribution.graph import (
    LOGIT, MAX_FEATURE_NODES, AttributionGraph, GraphEdge, GraphLayer, GraphNode, Key, node_id, prune,
)
from steering.attribution.linearise import frozen_nonlinearities
from steering.errors import SteeringError
from steering.hooks import edit_site
from steering.sae.autoencoder import NormInfo, SparseAutoencoder

BACKWARD_CHUNK = 8  # at most this many backwards per step
BACKWARD_POSITIONS = 512  # and about this many token positions in all: a step's cost grows with both


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


def _rows_grads(pre: Tensor, rows: Sequence[tuple[int, int]], inputs: Sequence[Tensor],
                chunk: int = 16) -> Iterator[tuple[Tensor, ...]]:
    """d pre[t, k] / d inputs for each (t, k) in rows: backwards batched `chunk` at a time (vmap over the
    graph, which is kept for the next call)."""
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        seeds = torch.zeros(len(part), *pre.shape, dtype=pre.dtype, device=pre.device)
        for j, (t, k) in enumerate(part):
            seeds[j, t, k] = 1.0
        grads = torch.autograd.grad(pre, list(inputs), grad_outputs=seeds, retain_graph=True, is_grads_batched=True)
        for j in range(len(part)):
            yield tuple(g[j] for g in grads)


# ------------------------------------------------------------------ the build, in steps
class GraphBuild:
    """The graph of the next token after `ids` over the SAEs in `layers`, computed in short steps.

        build = GraphBuild(model, tokenizer, layers, ids)     # checks its input; no torch work
        while not build.done:
            build.step()                                      # the forward, then chunks of backwards
        graph = build.result()

    Raises SteeringError (at construction) naming `messages`, `target`, `contrast`,
    `max_feature_nodes`, `node_threshold`, `edge_threshold` or `sae`.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, layers: Sequence[GraphLayer], ids: Sequence[int],
                 target: str | None = None, contrast: str | None = None, max_feature_nodes: int = 16,
                 node_threshold: float = 0.8, edge_threshold: float = 0.98, chunk: int | None = None):
        _check(layers, ids, max_feature_nodes, node_threshold, edge_threshold)
        self.model, self.tokenizer, self.ids = model, tokenizer, list(ids)
        self.layers = sorted(layers, key=lambda g: g.layer)
        self.target_id = token_id_of(tokenizer, target, "target") if target is not None else None
        self.contrast_id = token_id_of(tokenizer, contrast, "contrast") if contrast is not None else None
        self.max_feature_nodes = max_feature_nodes
        self.chunk = chunk or max(1, min(BACKWARD_CHUNK, BACKWARD_POSITIONS // len(self.ids)))
        self.node_threshold, self.edge_threshold = node_threshold, edge_threshold
        self.sites = [_Site(g.layer) for g in self.layers]
        self.emb: dict[str, Tensor] = {}
        self.influence: dict[Key, float] = defaultdict(float)
        self.influence[LOGIT] = 1.0
        self.edges: dict[Key, dict[Key, float]] = {}
        self.coverage: dict[int, float] = {}
        self.exact = False
        self.logits: Tensor | None = None
        self.metric = 0.0
        self._metric: Tensor | None = None  # between the forward and the logit's backward
        self._level = len(self.sites)  # the layer index whose candidates are being expanded (len: the logit)
        self._pending: list[Key] = []
        self.done = False
        self.steps = 0
        self.seconds = 0.0  # spent in steps (a server's waits between them left out)

    def step(self) -> None:
        """One piece of the work: the forward, the logit's inputs, or up to `chunk` backwards."""
        t0 = time.perf_counter()
        with torch.inference_mode(False), torch.enable_grad():  # a server's compute thread runs in inference mode
            if self.logits is None:
                self._forward()
            elif LOGIT not in self.edges:
                self._logit_inputs()
            else:
                if not self._pending:
                    self._next_layer()
                self._expand(self._pending[: self.chunk])
                del self._pending[: self.chunk]
        self.steps += 1
        self.seconds += time.perf_counter() - t0
        self.done = LOGIT in self.edges and not self._pending and self._level == 0

    def _forward(self) -> None:
        model, device = self.model, next(self.model.parameters()).device
        with ExitStack() as stack:
            self.exact = stack.enter_context(frozen_nonlinearities(model)).exact
            handle = model.get_input_embeddings().register_forward_hook(_embedding_leaf(self.emb))
            stack.callback(handle.remove)
            for g, site in zip(self.layers, self.sites):
                stack.enter_context(edit_site(model, g.layer, "resid_post", _splicer(g.sae, site)))
            logits = model(input_ids=torch.tensor([self.ids], device=device), use_cache=False).logits[0, -1]
        if self.target_id is None:
            self.target_id = int(logits.argmax())
        self._metric = logits[self.target_id] - (logits[self.contrast_id] if self.contrast_id is not None else 0.0)
        self.logits, self.metric = logits.detach().float(), float(self._metric.detach())

    def _logit_inputs(self) -> None:
        last = self.sites[-1]
        grads = torch.autograd.grad(self._metric, [last.f, last.e])
        self._metric = None
        self.edges[LOGIT] = _source_weights(last, self.emb["x"], grads)
        _pass_influence(self.influence, LOGIT, self.edges[LOGIT])
        self._next_layer()

    def _next_layer(self) -> None:
        """Pick the next layer down's features of highest influence (its influence is complete now)."""
        self._level -= 1
        layer = self.sites[self._level].layer
        at_layer = [k for k in self.influence if k[0] in ("feature", "error", "sink") and k[1] == layer]
        candidates = sorted((k for k in at_layer if k[0] == "feature"), key=lambda k: -self.influence[k])
        self._pending = candidates[: self.max_feature_nodes]
        total = sum(self.influence[k] for k in at_layer)
        self.coverage[layer] = sum(self.influence[k] for k in self._pending) / total if total else 0.0

    def _expand(self, keys: list[Key]) -> None:
        if not keys:
            return
        site = self.sites[self._level]
        below = self.sites[self._level - 1] if self._level else None
        inputs = [below.f, below.e] if below is not None else [self.emb["x"]]
        for key, grads in zip(keys, _rows_grads(site.pre, [(k[2], k[3]) for k in keys], inputs)):
            self.edges[key] = _source_weights(below, self.emb["x"], grads)
            _pass_influence(self.influence, key, self.edges[key])

    def result(self) -> AttributionGraph:
        """The pruned graph (after the last step)."""
        assert self.done and self.logits is not None and self.target_id is not None
        influence, logits = self.influence, self.logits
        kept, kept_edges = prune(influence, self.edges, self.node_threshold, self.edge_threshold)
        probs = torch.softmax(logits, -1)

        def logit_of(i: int) -> TargetLogit:
            return TargetLogit(self.tokenizer.decode([i]), i, float(logits[i]), float(probs[i]))

        by_layer = {g.layer: (g, s) for g, s in zip(self.layers, self.sites)}
        tokens = tuple(self.tokenizer.decode([i]) for i in self.ids)
        target = logit_of(self.target_id)
        nodes = [_node(k, influence[k], by_layer, tokens, self.emb["x"], self.metric, target)
                 for k in sorted(kept, key=lambda k: (k != LOGIT, -influence[k]))]
        non_logit = sum(v for k, v in influence.items() if k != LOGIT)
        return AttributionGraph(
            tokens=tokens, token_ids=tuple(self.ids), layers=tuple(g.layer for g in self.layers),
            sae_names=tuple(g.name for g in self.layers), target=target,
            contrast=logit_of(self.contrast_id) if self.contrast_id is not None else None, metric=self.metric,
            nodes=tuple(nodes),
            edges=tuple(GraphEdge(node_id(s), node_id(t), w, share) for s, t, w, share in kept_edges),
            node_threshold=self.node_threshold, edge_threshold=self.edge_threshold, coverage=dict(self.coverage),
            error_influence=sum(v for k, v in influence.items() if k[0] == "error") / non_logit if non_logit else 0.0,
            exact=self.exact, computed_nodes=len(self.edges),
            stats={"steps": float(self.steps), "compute_seconds": self.seconds, "sources_with_influence": float(len(influence) - 1),
                   "edges_computed": float(sum(len(v) for v in self.edges.values()))})


def attribution_graph(model: nn.Module, tokenizer: Any, layers: Sequence[GraphLayer], ids: Sequence[int],
                      target: str | None = None, contrast: str | None = None, max_feature_nodes: int = 16,
                      node_threshold: float = 0.8, edge_threshold: float = 0.98) -> AttributionGraph:
    """`GraphBuild` run to the end in one go (module docstring)."""
    build = GraphBuild(model, tokenizer, layers, ids, target, contrast, max_feature_nodes, node_threshold,
                       edge_threshold)
    while not build.done:
        build.step()
    return build.result()


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
        return GraphNode(node_id(key), "error", key[1], t, tokens[t], None, float(site.e[t].detach().norm()), infl)
    k = key[3]
    cat = g.catalogue
    label = cat.labels[k] if cat is not None and k < len(cat) else None
    return GraphNode(node_id(key), "feature", key[1], t, tokens[t], k, float(site.f[t, k].detach()), infl, label)


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
    check_prompt(ids)
    if isinstance(max_feature_nodes, bool) or not isinstance(max_feature_nodes, int) \
            or not 1 <= max_feature_nodes <= MAX_FEATURE_NODES:
        raise SteeringError(f"must be an integer in 1..{MAX_FEATURE_NODES}", "max_feature_nodes")
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise SteeringError("must be a number in (0, 1]", name)
