"""What the feature endpoints know about the loaded SAE's features.

Two sources, one answer shape (`api.protocol.FeatureDetail`):

- the SAE's catalogue, when one ships next to its weights (`steering.sae.catalogue`,
  found by `find_catalogue`): label, statistics, top contexts, logit effects
  and neighbours as the catalogue stores them;
- otherwise the SAE itself: statistics from its `max_activation` and
  `firing_frequency` buffers (null where unknown), no label, no contexts, and
  logit effects and neighbours computed live:

      effect[v]   = W_dec[i] . W_U[v]              (final norm ignored)   [V]
      cosine[j]   = W_dec[i] . W_dec[j] / (|W_dec[i]| |W_dec[j]|)         [d_sae]

Search by text runs the text through the model up to the SAE's hook site and
ranks features by their peak activation on it, relative to each feature's max
activation when the statistics are known (raw otherwise). Search by concept
reads the text as a concept and ranks features by
`steering.concepts.search.find_concept_features` (specificity on text about the
concept x logit effect); the catalogue's label matches join its pool. Those
forwards must not overlap the engine's (see `api.gate`); the caller holds
the gate.

The catalogue is used by duck typing (`feature(i)`, `search(q, limit)`), so
this module works before and after `steering.sae.catalogue` exists.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import torch

from api.protocol import (ConceptScores, FeatureDetail, FeatureList, FeatureMatch, FeatureSummary, Neighbour,
                          TokenEffect)
from steering.concepts.search import ConceptCandidate, find_concept_features
from steering.hooks import capture, run_until_capture
from steering.sae.autoencoder import SparseAutoencoder

log = logging.getLogger(__name__)
TOP_TOKENS = 10
TOP_NEIGHBOURS = 10


def find_catalogue(sae_dir: Path | None) -> Any | None:
    """The catalogue stored with an SAE, or None (no module, no file, or unreadable: logged)."""
    if sae_dir is None:
        return None
    sae_dir = Path(sae_dir)
    if sae_dir.is_file():
        sae_dir = sae_dir.parent
    if not sae_dir.is_dir():
        return None
    try:
        from steering.sae.catalogue import Catalogue  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        catalogue = Catalogue.load(sae_dir)
    except FileNotFoundError:
        log.info("no feature catalogue in %s: labels and contexts are unavailable", sae_dir)
        return None
    except (OSError, ValueError, KeyError) as e:
        log.warning("cannot read the feature catalogue in %s (%s): going on without it", sae_dir, e)
        return None
    log.info("feature catalogue loaded from %s (%d features)", sae_dir, len(catalogue))
    return catalogue


def _as_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "to_dict"):  # steering.sae.catalogue.FeatureInfo: contexts with the peak marked
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    return dict(vars(obj)) if hasattr(obj, "__dict__") else {}


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return None


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _effects(items: Any) -> list[TokenEffect]:
    out = []
    for item in items or []:
        if isinstance(item, (list, tuple)):
            if len(item) == 3:
                tid, tok, eff = item
            else:
                (tok, eff), tid = item, None
            out.append(TokenEffect(token=str(tok), token_id=None if tid is None else int(tid), effect=float(eff)))
        else:
            d = _as_dict(item)
            eff = _first(d, "effect", "logit", "value", "score")
            tid = d.get("token_id")
            out.append(TokenEffect(token=str(d.get("token", "")), token_id=None if tid is None else int(tid),
                                   effect=float(eff or 0.0)))
    return out


def _neighbours(items: Any) -> list[Neighbour]:
    out = []
    for item in items or []:
        if isinstance(item, int):
            out.append(Neighbour(index=item, cosine=float("nan")))
        elif isinstance(item, (list, tuple)):
            out.append(Neighbour(index=int(item[0]), cosine=float(item[1])))
        else:
            d = _as_dict(item)
            out.append(Neighbour(index=int(d["index"]), cosine=float(_first(d, "cosine", "similarity", "score") or 0.0)))
    return out


class FeatureService:
    """Feature look-ups over one model, tokenizer, SAE and optional catalogue (all shared, read-only).

    `sm` (the steering.steered_model.SteeredModel holding them) is needed by
    the concept search only.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, sae: SparseAutoencoder, catalogue: Any | None = None,
                 sm: Any | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.sae = sae
        self.catalogue = catalogue
        self.sm = sm

    @property
    def total(self) -> int:
        return self.sae.d_sae

    def _catalogue_entry(self, index: int) -> dict[str, Any]:
        if self.catalogue is None:
            return {}
        try:
            return _as_dict(self.catalogue.feature(index))
        except (KeyError, IndexError, ValueError):
            return {}

    def summary(self, index: int, entry: dict[str, Any] | None = None) -> FeatureSummary:
        entry = self._catalogue_entry(index) if entry is None else entry
        return FeatureSummary(
            index=index,
            label=entry.get("label"),
            max_activation=_finite(_first(entry, "max_activation")) or _finite(self.sae.max_activation[index]),
            firing_frequency=_finite(_first(entry, "firing_frequency", "frequency", "density"))
            if _first(entry, "firing_frequency", "frequency", "density") is not None
            else _finite(self.sae.firing_frequency[index]),
        )

    def page(self, offset: int, limit: int) -> FeatureList:
        stop = min(offset + limit, self.total)
        data = [self.summary(i) for i in range(offset, stop)]
        return FeatureList(data=data, offset=offset, limit=limit, total=self.total, has_more=stop < self.total)

    def detail(self, index: int) -> FeatureDetail:
        """Everything about one feature (computes effects and neighbours when the catalogue lacks them)."""
        entry = self._catalogue_entry(index)
        base = self.summary(index, entry)
        promoted = _effects(_first(entry, "promoted_tokens", "promoted", "top_promoted"))
        suppressed = _effects(_first(entry, "suppressed_tokens", "suppressed", "top_suppressed"))
        neighbours = _neighbours(_first(entry, "neighbours", "neighbors"))
        if not promoted and not suppressed:
            promoted, suppressed = self.logit_effects(index)
        if not neighbours:
            neighbours = self.nearest(index)
        contexts = [c if isinstance(c, dict) else _as_dict(c) or {"text": str(c)}
                    for c in _first(entry, "top_contexts", "contexts", "examples") or []]
        return FeatureDetail(
            **base.model_dump(exclude={"object"}),
            top_contexts=contexts,
            promoted_tokens=promoted,
            suppressed_tokens=suppressed,
            neighbours=neighbours,
            source="catalogue" if entry else "sae",
        )

    @torch.no_grad()
    def logit_effects(self, index: int, k: int = TOP_TOKENS) -> tuple[list[TokenEffect], list[TokenEffect]]:
        out_emb = self.model.get_output_embeddings()
        if out_emb is None:
            return [], []
        w_u = out_emb.weight  # [V, d]
        direction = self.sae.W_dec[index].to(w_u.device, torch.float32)  # [d]
        effect = (w_u.float() @ direction).cpu()  # [V]
        k = min(k, effect.numel())
        top, bottom = effect.topk(k), (-effect).topk(k)

        def tokens(ids: torch.Tensor, values: torch.Tensor) -> list[TokenEffect]:
            return [TokenEffect(token=self.tokenizer.decode([int(i)]), token_id=int(i), effect=float(v))
                    for i, v in zip(ids, values)]

        return tokens(top.indices, top.values), tokens(bottom.indices, -bottom.values)

    @torch.no_grad()
    def nearest(self, index: int, k: int = TOP_NEIGHBOURS) -> list[Neighbour]:
        w = self.sae.W_dec.float()
        w = w / w.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        cos = (w @ w[index]).cpu()
        cos[index] = -math.inf
        best = cos.topk(min(k, self.total - 1))
        return [Neighbour(index=int(i), cosine=float(v)) for i, v in zip(best.indices, best.values)]

    def label_matches(self, query: str, limit: int) -> list[FeatureMatch]:
        if self.catalogue is None or not hasattr(self.catalogue, "search"):
            return []
        scores = self.catalogue.search_scores(query) if hasattr(self.catalogue, "search_scores") else None
        out = []
        for item in self.catalogue.search(query, limit):
            if isinstance(item, int):
                index, score = item, None
            elif isinstance(item, (list, tuple)):
                index, score = int(item[0]), _finite(item[1]) if len(item) > 1 else None
            else:
                d = _as_dict(item)
                index, score = int(d["index"]), _finite(_first(d, "score", "similarity"))
            if score is None and scores is not None:
                score = _finite(scores[index])
            out.append(FeatureMatch(index=index, label=self._catalogue_entry(index).get("label"),
                                    match="label", score=score))
        return out[:limit]

    @torch.no_grad()
    def activation_matches(self, query: str, limit: int) -> list[FeatureMatch]:
        """Run the query up to the hook site; the features most active on it. Caller holds the gate."""
        ids = list(self.tokenizer(query, add_special_tokens=False)["input_ids"])
        if not ids:
            return []
        # Position 0 is an attention sink (huge norms): a neutral first token takes it.
        sink = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([[sink, *ids]], device=device)
        cfg = self.sae.cfg
        with capture(self.model, cfg.hook_layer, cfg.hook_site, stop=True) as store:
            run_until_capture(self.model, input_ids=input_ids, use_cache=False)
        hidden = store[0][0, 1:].to(self.sae.W_enc.device, self.sae.W_enc.dtype)  # [T, d_in]
        acts = self.sae.encode(hidden).float()  # [T, d_sae]
        peak, where = acts.max(dim=0)  # [d_sae]
        max_act = self.sae.max_activation.to(peak.device).float()
        relative = torch.where(torch.isfinite(max_act) & (max_act > 0), peak / max_act, torch.full_like(peak, math.nan))
        score = relative.nan_to_num(nan=-1.0) if self.sae.has_stats else peak
        score = score.masked_fill(peak <= 0, -math.inf)
        k = min(limit, int((peak > 0).sum()))
        if k == 0:
            return []
        best = score.topk(k).indices.tolist()
        out = []
        for i in best:
            entry = self._catalogue_entry(i)
            out.append(FeatureMatch(
                index=i, label=entry.get("label"), match="activation",
                activation=float(peak[i]), relative_activation=_finite(relative[i]),
                token=self.tokenizer.decode([ids[int(where[i])]]),
            ))
        return out

    def concept_match(self, c: ConceptCandidate) -> FeatureMatch:
        scores = ConceptScores(**{k: v for k, v in c.to_dict().items() if k != "index"})
        return FeatureMatch(index=c.index, label=self._catalogue_entry(c.index).get("label"), match="concept",
                            score=c.score, concept=scores)

    def concept_matches(self, concept: str, limit: int, extra: list[int] | tuple[int, ...] = ()) -> list[FeatureMatch]:
        """Features for `concept`, ranked by specificity x logit effect. Caller holds the gate.

        Raises steering's SteeringError (param `concept`) for a blank concept.
        """
        if self.sm is None:
            return []
        found = find_concept_features(self.sm, concept, limit=limit, extra=extra)
        return [self.concept_match(c) for c in found]
