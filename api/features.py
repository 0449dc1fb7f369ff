"""What the feature endpoints know about the loaded SAE's features.

Two sources, one answer shape (`api.protocol.FeatureDetail`):

- the SAE's catalogue, when one ships next to its weights (`SteeredModel.catalogue`,
  a `steering.sae.Catalogue`): label, statistics, top contexts, logit effects
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
`steering.concepts.find_concept_features` (specificity on text about the
concept x logit effect); the catalogue's label matches join its pool. Those
forwards must not overlap the engine's (see `api.gate`); the caller holds
the gate, and runs them on the compute thread.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from api.protocol import (
    ConceptScores,
    FeatureDetail,
    FeatureList,
    FeatureMatch,
    FeatureSummary,
    Neighbour,
    TokenEffect,
    TopContext,
)
from steering.concepts import ConceptCandidate, find_concept_features
from steering.hooks import capture, run_until_capture
from steering.sae import FeatureInfo
from steering.steered_model import SteeredModel

TOP_TOKENS = 10
TOP_NEIGHBOURS = 10


def _finite(x: Any) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


class FeatureService:
    """Feature look-ups over one SteeredModel's model, tokenizer, SAE and catalogue (all shared, read-only)."""

    def __init__(self, sm: SteeredModel):
        if sm.sae is None:
            raise ValueError("feature look-ups need an SAE")
        self.sm = sm
        self.model = sm.loaded.model
        self.tokenizer = sm.loaded.tokenizer
        self.sae = sm.sae
        self.catalogue = sm.catalogue

    @property
    def total(self) -> int:
        return self.sae.d_sae

    def _entry(self, index: int) -> FeatureInfo | None:
        return self.catalogue.feature(index) if self.catalogue is not None else None

    def label(self, index: int) -> str | None:
        return self.catalogue.labels[index] if self.catalogue is not None else None

    def label_kind(self, index: int) -> str | None:
        return self.catalogue.label_kinds[index] if self.catalogue is not None else None

    def summary(self, index: int, entry: FeatureInfo | None = None) -> FeatureSummary:
        """Statistics from the catalogue when it has one (measured on held-out text), else the SAE's buffers."""
        if entry is not None:
            return FeatureSummary(index=index, label=entry.label, label_kind=entry.label_kind,
                                  max_activation=_finite(entry.max_activation),
                                  firing_frequency=_finite(entry.firing_frequency))
        return FeatureSummary(index=index, label=self.label(index), label_kind=self.label_kind(index),
                              max_activation=_finite(self.sae.max_activation[index]),
                              firing_frequency=_finite(self.sae.firing_frequency[index]))

    def page(self, offset: int, limit: int) -> FeatureList:
        stop = min(offset + limit, self.total)
        data = [self.summary(i, self._entry(i)) for i in range(offset, stop)]
        return FeatureList(data=data, offset=offset, limit=limit, total=self.total, has_more=stop < self.total)

    def detail(self, index: int) -> FeatureDetail:
        """Everything about one feature (effects and neighbours computed when there is no catalogue)."""
        entry = self._entry(index)
        base = self.summary(index, entry)
        if entry is None:
            promoted, suppressed = self.logit_effects(index)
            return FeatureDetail(**base.model_dump(exclude={"object"}), promoted_tokens=promoted,
                                 suppressed_tokens=suppressed, neighbours=self.nearest(index), source="sae")
        return FeatureDetail(
            **base.model_dump(exclude={"object"}),
            top_contexts=[TopContext(text=c.text, token=c.token, activation=c.activation) for c in entry.contexts],
            promoted_tokens=[TokenEffect(token=t, effect=v) for t, v in entry.promoted],
            suppressed_tokens=[TokenEffect(token=t, effect=v) for t, v in entry.suppressed],
            neighbours=[Neighbour(index=i, cosine=c) for i, c in entry.neighbours],
            source="catalogue",
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
        """The catalogue's best label matches (none without a catalogue); numpy only, no model."""
        if self.catalogue is None:
            return []
        return [FeatureMatch(index=i, label=self.label(i), label_kind=self.label_kind(i), match="label", score=score)
                for i, score in self.catalogue.matches(query, limit)]

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
        return [FeatureMatch(index=i, label=self.label(i), label_kind=self.label_kind(i), match="activation",
                             activation=float(peak[i]),
                             relative_activation=_finite(relative[i]),
                             token=self.tokenizer.decode([ids[int(where[i])]]))
                for i in score.topk(k).indices.tolist()]

    def concept_match(self, c: ConceptCandidate) -> FeatureMatch:
        scores = ConceptScores(**{k: v for k, v in c.to_dict().items() if k != "index"})
        return FeatureMatch(index=c.index, label=self.label(c.index), label_kind=self.label_kind(c.index),
                            match="concept", score=c.score, concept=scores)

    def concept_matches(self, concept: str, limit: int, extra: list[int] | tuple[int, ...] = ()) -> list[FeatureMatch]:
        """Features for `concept`, ranked by specificity x logit effect. Caller holds the gate.

        Raises steering's SteeringError (param `concept`) for a blank concept.
        """
        return [self.concept_match(c) for c in find_concept_features(self.sm, concept, limit=limit, extra=extra)]
