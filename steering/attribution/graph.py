"""An attribution graph's data: nodes, edges, their ids, and pruning (built by `steering.attribution.tracing`).

Nodes: features (a layer, a position, a feature index), error nodes (the
SAE's error at a layer and position), the sink (a layer's position 0 as one
node), token embeddings (a position) and the output (the target's logit, or
the difference of two). Edges run from a node at one level to a node at the
next (tokens -> first SAE layer -> ... -> last SAE layer -> output) with
their weight: the source's direct effect on the target's pre-activation.

Pruning (as circuit-tracer does): keep the nodes of highest influence that
together hold `node_threshold` of it all (default 0.8, every kind
competing); among edges between kept nodes, those of highest
|w(u -> d)| / sum_u' |w(u' -> d)| * infl(d) that hold `edge_threshold` of
that total (default 0.98); then drop nodes left without an edge. The output
is always kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from steering.attribution.features import TargetLogit
from steering.sae.autoencoder import SparseAutoencoder
from steering.sae.catalogue import Catalogue

if TYPE_CHECKING:
    from steering.steered_model import SteeredModel

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


def graph_layers(sm: "SteeredModel") -> list[GraphLayer]:
    """The SAEs a graph of `sm` runs through: `sm.graph_saes` when set, else its SAE and every other shipped
    SAE of the model at another layer (resid_post), read once and kept in `sm.graph_saes`; none without an SAE."""
    from steering.sae.formats import load_sae
    from steering.steered_model import shipped_sae_dirs

    if sm.sae is None:
        return []
    if sm.graph_saes is None:
        layers = [GraphLayer(_autograd_ready(sm.sae), sm.catalogue, sm.sae_id)]
        taken = {sm.sae.cfg.hook_layer}
        for folder in shipped_sae_dirs(sm.model_id):
            if sm.sae_dir is not None and folder.resolve() == Path(sm.sae_dir).resolve():
                continue
            sae = _autograd_ready(load_sae(folder, device=sm.loaded.device).eval().requires_grad_(False))
            if sae.cfg.hook_site == "resid_post" and sae.cfg.hook_layer not in taken:
                taken.add(sae.cfg.hook_layer)
                layers.append(GraphLayer(sae, Catalogue.find(folder, sae.d_sae), folder.name))
        sm.graph_saes = sorted(layers, key=lambda g: g.layer)
    return list(sm.graph_saes)


def _autograd_ready(sae: SparseAutoencoder) -> SparseAutoencoder:
    """`sae`, or a copy of it made outside inference mode when its tensors were made inside it (a server loads
    on its compute thread, in inference mode): a graph's backward goes through the encoder, and autograd
    cannot save inference tensors. The shared SAE itself is left as it is."""
    tensors = [*sae.parameters(), *sae.buffers()]
    if not any(t.is_inference() for t in tensors):
        return sae
    ref = tensors[0]
    with torch.inference_mode(False):
        copy = type(sae)(sae.cfg)
        copy.load_state_dict({k: v.clone() for k, v in sae.state_dict().items()})
        return copy.to(device=ref.device, dtype=ref.dtype).eval().requires_grad_(False)


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


