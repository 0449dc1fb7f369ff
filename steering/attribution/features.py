"""Feature attribution at the SAE's layer: activation x gradient, with the SAE's error kept as nodes.

At the hook site the activation h_t of every position t [T, d] is split
exactly into the SAE's reconstruction and its error:

    f_t   = encode(h_t)                       [T, d_sae]  (held fixed, a leaf)
    e_t   = h_t - decode(f_t)                 [T, d]      (held fixed, a leaf)
    h_t'  = decode(f_t) + e_t  (= h_t: the forward is unchanged)

and the model runs on from h'. For a target metric m (the logit of a token
at the last position, or the difference of two tokens' logits), one
backward pass gives

    score(t, i)      = f_t[i] * dm/df_t[i]        a feature node
    score(t, error)  = e_t . dm/de_t              an error node (one per position)

Position 0 is the attention sink (the chat template's first token, or the
sink token put before a plain text): the model parks attention there, its
activation is orders of magnitude larger than any other and the SAE reads it
poorly (thousands of features fire on it), so it is one node, `sink`, scored
as a whole: score(0) = sum_i score(0, i) + score(0, error) = h_0 . dm/dh_0.

To change the answer: `suggestions` are the features of the strongest
positive nodes (position 0 left out), among features that fire on at most
1% of tokens; clamping one to 0 at every position (the clamp it carries,
with positions `all`) lowers the metric by about its scores summed over
every position (`estimated_drop`, first order).

A node's score is the first-order estimate of how much m would drop if the
node were removed (set to zero, everything else kept): positive nodes push
the target up. It is exact when the model past the SAE's layer is linear in
the node, and only an estimate otherwise (attention and norms bend it).
Shares are |score| / the sum of |score| over every node, features and
errors, so `error_share` says how much of the estimated effect the SAE's
features do not explain.

The forward runs with a hook on the shared model (`steering.hooks.edit_site`),
which a server runs on its compute thread with the model to itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor

from steering.errors import SteeringError
from steering.hooks import edit_site

if TYPE_CHECKING:
    from steering.steered_model import SteeredModel

MAX_ATTRIBUTION_TOKENS = 512  # a prompt's length bound (the backward keeps every layer's activations)
MAX_NODES = 100
MAX_SUGGESTIONS = 5
SPECIFIC_FREQUENCY = 0.01  # a suggested clamp's feature fires on at most this share of tokens


@dataclass(frozen=True)
class Node:
    """One node: a feature at a position, the SAE's error there, or the sink (module docstring)."""

    position: int
    token: str
    kind: str  # "feature", "error" (the SAE's error at the position) or "sink" (position 0 as a whole)
    feature: int | None
    activation: float  # f_t[i]; for an error node |e_t|; for the sink |h_0|
    score: float
    share: float
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Suggestion:
    """A feature to clamp to 0 at every position to lower the metric by about `estimated_drop` (module docstring)."""

    feature: int
    label: str | None
    positions: tuple[int, ...]  # where it fires in the text
    estimated_drop: float

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "label": self.label, "positions": list(self.positions),
                "estimated_drop": self.estimated_drop,
                "clamp": {"index": self.feature, "value": 0.0, "mode": "clamp", "unit": "raw"}}


@dataclass(frozen=True)
class TargetLogit:
    token: str
    token_id: int
    logit: float
    probability: float


@dataclass(frozen=True)
class Attribution:
    target: TargetLogit
    contrast: TargetLogit | None
    metric: float  # the target's logit, minus the contrast's when there is one
    nodes: tuple[Node, ...]  # the top nodes by |score|, features and errors together
    error_share: float
    feature_share: float
    sink_share: float
    active_features: int  # (position, feature) pairs with f > 0, position 0 left out
    prompt_tokens: int
    top_token_id: int  # the model's own most likely next token
    suggestions: tuple[Suggestion, ...] = ()  # features to clamp to 0 to lower the metric, strongest first

    def suggested_steering(self) -> dict[str, Any]:
        """The suggestions as a chat request's `steering`: every clamp, at every position."""
        return {"features": [s.to_dict()["clamp"] for s in self.suggestions], "positions": "all"}

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target.__dict__, "contrast": self.contrast.__dict__ if self.contrast else None,
                "suggestions": [s.to_dict() for s in self.suggestions], "metric": self.metric,
                "nodes": [n.to_dict() for n in self.nodes], "error_share": self.error_share,
                "feature_share": self.feature_share, "sink_share": self.sink_share, "active_features": self.active_features,
                "prompt_tokens": self.prompt_tokens, "top_token_id": self.top_token_id}


def check_prompt(ids: Sequence[int]) -> None:
    """Raises SteeringError naming `messages` for an empty prompt or one past MAX_ATTRIBUTION_TOKENS."""
    if not ids:
        raise SteeringError("the prompt is empty", "messages")
    if len(ids) > MAX_ATTRIBUTION_TOKENS:
        raise SteeringError(f"the prompt has {len(ids)} tokens; at most {MAX_ATTRIBUTION_TOKENS} are attributed",
                            "messages")


def token_id_of(tokenizer: Any, text: str, param: str) -> int:
    """The first token of `text` (as the model would write it: include a leading space where it has one)."""
    if not isinstance(text, str) or not text:
        raise SteeringError("must be a non-empty string", param)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise SteeringError(f"{text!r} is not a token of this model", param)
    return int(ids[0])


def _split_at_site(sae: Any, hidden: Tensor, leaves: dict[str, Tensor]) -> Tensor:
    """hidden [1, T, d] -> decode(f) + e, with f and e fresh leaves that need gradients (module docstring)."""
    h = hidden[0].detach().to(sae.W_dec.dtype)
    x_n, info = sae.normalize(h)
    f = sae.activate(sae.pre_activations(x_n)).detach().requires_grad_(True)
    recon = sae.decode(f, info)
    e = (h - recon).detach().requires_grad_(True)
    leaves.update(f=f, e=e, h=h)
    return (recon + e).to(hidden.dtype)[None]


def attribute(sm: "SteeredModel", ids: Sequence[int], target: str | None = None, contrast: str | None = None,
              top_k: int = 20) -> Attribution:
    """Attribute the next token's target logit after prompt `ids` to the SAE's (position, feature) nodes.

    `target`: a token string (its first token), or None for the model's own
    next token (the argmax); `contrast`: a second token whose logit is
    subtracted. Raises SteeringError naming `messages`, `target`, `contrast`
    or `top_k`.
    """
    sae, model, tok = sm.sae, sm.loaded.model, sm.loaded.tokenizer
    if sae is None:
        raise SteeringError("no SAE is loaded: there are no features to attribute to", "sae")
    check_prompt(ids)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_NODES:
        raise SteeringError(f"must be an integer in 1..{MAX_NODES}", "top_k")
    target_id = token_id_of(tok, target, "target") if target is not None else None
    contrast_id = token_id_of(tok, contrast, "contrast") if contrast is not None else None
    leaves: dict[str, Tensor] = {}
    device = next(model.parameters()).device
    # A server's compute thread runs inside inference mode: gradients need it off here.
    with torch.inference_mode(False), torch.enable_grad(), \
            edit_site(model, sae.cfg.hook_layer, sae.cfg.hook_site, lambda h: _split_at_site(sae, h, leaves)):
        logits = model(input_ids=torch.tensor([list(ids)], device=device)).logits[0, -1].float()
        if target_id is None:
            target_id = int(logits.argmax())
        metric = logits[target_id] - (logits[contrast_id] if contrast_id is not None else 0.0)
        grad_f, grad_e = torch.autograd.grad(metric, [leaves["f"], leaves["e"]])
    f, e = leaves["f"].detach(), leaves["e"].detach()
    feature_scores = (f * grad_f).float().cpu()  # [T, d_sae]
    error_scores = (e * grad_e).sum(-1).float().cpu()  # [T]
    suggestions = _suggestions(sm, f.float().cpu(), feature_scores)
    sink_score = float(feature_scores[0].sum() + error_scores[0])  # position 0 as one node
    sink_size = float(leaves["h"][0].norm())
    feature_scores[0] = 0.0
    error_scores[0] = 0.0
    total = float(feature_scores.abs().sum() + error_scores.abs().sum()) + abs(sink_score) or 1.0
    logits = logits.detach()
    probs = torch.softmax(logits, -1)

    def logit_of(i: int) -> TargetLogit:
        return TargetLogit(tok.decode([i]), i, float(logits[i]), float(probs[i]))

    return Attribution(
        target=logit_of(target_id), contrast=logit_of(contrast_id) if contrast_id is not None else None,
        metric=float(metric.detach()),
        nodes=_top_nodes(sm, ids, f.float().cpu(), feature_scores, e, error_scores, (sink_score, sink_size), total, top_k),
        error_share=float(error_scores.abs().sum()) / total, feature_share=float(feature_scores.abs().sum()) / total,
        sink_share=abs(sink_score) / total,
        active_features=int((f[1:] > 0).sum()), prompt_tokens=len(ids), top_token_id=int(logits.argmax()),
        suggestions=suggestions)


def _suggestions(sm: "SteeredModel", f: Tensor, feature_scores: Tensor, k: int = MAX_SUGGESTIONS) -> tuple[Suggestion, ...]:
    """The features of the k strongest positive (position, feature) nodes (f, feature_scores: [T, d_sae]),
    each with its score summed over every position (clamping it touches all of them).

    Ranked by the strongest node rather than by the sum, so that a feature that carries the answer at one
    token comes before a broad one that nudges it a little at many; and only features that fire on at most
    SPECIFIC_FREQUENCY of tokens (when the SAE knows its firing frequencies), since clamping a common one
    everywhere changes much more than this answer."""
    best = feature_scores[1:].amax(0).clone()  # position 0 is the sink: its nodes are not read one by one
    freq = getattr(sm.sae, "firing_frequency", None)
    if freq is not None:
        best[(freq.float().cpu() > SPECIFIC_FREQUENCY)] = 0  # NaN (unknown) compares False: kept
    totals = feature_scores.sum(0)
    catalogue = sm.catalogue
    out = []
    for i in best.topk(min(4 * k, best.numel())).indices.tolist():
        if best[i] <= 0 or len(out) == k:
            break
        if totals[i] <= 0:
            continue  # helps at one token, hurts more elsewhere: clamping it everywhere would raise the target
        label = catalogue.labels[i] if catalogue is not None and i < len(catalogue) else None
        where = tuple(int(t) for t in torch.nonzero(f[:, i] > 0).flatten().tolist())
        out.append(Suggestion(i, label, where, float(totals[i])))
    return tuple(out)


def _top_nodes(sm: "SteeredModel", ids: Sequence[int], f: Tensor, feature_scores: Tensor, e: Tensor,
               error_scores: Tensor, sink: tuple[float, float], total: float, top_k: int) -> tuple[Node, ...]:
    """The top_k nodes by |score|: features [T, d_sae], errors [T] and the sink (score, |h_0|) ranked together
    (position 0's feature and error scores are zeroed: they are the sink's)."""
    tok, catalogue = sm.loaded.tokenizer, sm.catalogue
    T, d_sae = feature_scores.shape
    flat = torch.cat([feature_scores.flatten(), error_scores, torch.tensor([sink[0]])])  # features, errors, sink
    k = min(top_k, int((flat != 0).sum()) or 1)
    nodes = []
    for j in flat.abs().topk(k).indices.tolist():
        score = float(flat[j])
        if j < T * d_sae:
            t, i = divmod(j, d_sae)
            label = catalogue.labels[i] if catalogue is not None and i < len(catalogue) else None
            nodes.append(Node(t, tok.decode([ids[t]]), "feature", i, float(f[t, i]), score, abs(score) / total, label))
        elif j < T * d_sae + T:
            t = j - T * d_sae
            nodes.append(Node(t, tok.decode([ids[t]]), "error", None, float(e[t].norm()), score, abs(score) / total))
        else:
            nodes.append(Node(0, tok.decode([ids[0]]), "sink", None, sink[1], score, abs(score) / total))
    return tuple(nodes)


def removal_edit(sae: Any, nodes: Sequence[tuple[int, int | str | None]], keep: float = 0.0) -> Callable[[Tensor], Tensor]:
    """A hook edit (`steering.hooks.edit_site`) at the SAE's site: the activation split into features and
    error, `nodes` ((position, feature), (position, None) for the error, or (0, "sink") for the whole of
    position 0) scaled by `keep` (0: removed), everything else held as it was."""

    def edit(hidden: Tensor) -> Tensor:
        h = hidden[0].to(sae.W_dec.dtype)
        x_n, info = sae.normalize(h)
        f = sae.activate(sae.pre_activations(x_n))
        e = h - sae.decode(f, info)
        f, e = f.clone(), e.clone()
        for t, i in nodes:
            if i == "sink":
                f[0] *= keep
                e[0] *= keep
            elif i is None:
                e[t] *= keep
            else:
                f[t, i] *= keep
        return (sae.decode(f, info) + e).to(hidden.dtype)[None]

    return edit


def logits_without(sm: "SteeredModel", ids: Sequence[int], nodes: Sequence[tuple[int, int | str | None]],
                   keep: float = 0.0) -> Tensor:
    """Next-token logits [V] with `nodes` scaled by `keep` at the SAE's layer (`removal_edit`)."""
    sae, model = sm.sae, sm.loaded.model
    device = next(model.parameters()).device
    with torch.no_grad(), edit_site(model, sae.cfg.hook_layer, sae.cfg.hook_site, removal_edit(sae, nodes, keep)):
        return model(input_ids=torch.tensor([list(ids)], device=device)).logits[0, -1].float()


def metric_without(sm: "SteeredModel", ids: Sequence[int], nodes: Sequence[tuple[int, int | str | None]], target_id: int,
                   contrast_id: int | None = None, keep: float = 0.0) -> float:
    """The true metric with `nodes` scaled by `keep` (`logits_without`): the check of a score."""
    logits = logits_without(sm, ids, nodes, keep)
    return float(logits[target_id] - (logits[contrast_id] if contrast_id is not None else 0.0))
