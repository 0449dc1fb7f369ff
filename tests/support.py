"""Helpers for the steering-evaluation tests: a tiny SteeredModel with a small ReLU SAE with stats.

The model and tokenizer come from conftest.py's fixtures (random Llama, byte
tokenizer); the SAE is seeded and its max activations are measured on a short
text, so `max` units work. Nothing here downloads anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from steering.hooks import capture, run_until_capture
from steering.models import LoadedModel
from steering.sae.autoencoder import SAEConfig, SparseAutoencoder
from steering.steered_model import SteeredModel

HOOK_LAYER = 2
CALIBRATION = "The bridge is in a big city. My friend likes the park. Numbers: 1 2 3, and some words."


def hook_acts(model: torch.nn.Module, ids: list[int], layer: int = HOOK_LAYER) -> torch.Tensor:
    """Activations [T, d] at resid_post of `layer` for one sequence."""
    with capture(model, layer, "resid_post", stop=True) as store:
        run_until_capture(model, input_ids=torch.tensor([ids]))
    return store[0][0]


def hook_acts_many(model: torch.nn.Module, tokenizer: Any, texts: list[str], layer: int = HOOK_LAYER) -> list[torch.Tensor]:
    """hook_acts for several texts, each after a sink token (as `concepts.text_stats` runs them), in one
    right-padded forward: [1 + T_i, d] each, position 0 the sink."""
    sink = tokenizer.eos_token_id
    rows = [[sink, *tokenizer(t)["input_ids"]] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with capture(model, layer, "resid_post", stop=True) as store:
        run_until_capture(model, input_ids=ids, attention_mask=mask)
    return [store[0][i, : len(r)] for i, r in enumerate(rows)]


def tiny_sae(model: torch.nn.Module, tokenizer: Any, d_sae: int = 64, seed: int = 0) -> SparseAutoencoder:
    cfg = SAEConfig(d_in=model.config.hidden_size, d_sae=d_sae, architecture="relu", hook_layer=HOOK_LAYER,
                    hook_site="resid_post", model_name="tiny-llama")
    sae = SparseAutoencoder.random(cfg, seed=seed)
    acts = sae.encode(hook_acts(model, tokenizer(CALIBRATION)["input_ids"])[1:])
    sae.set_feature_stats(acts.amax(0).clamp(min=1e-3), (acts > 0).float().mean(0))
    return sae.eval().requires_grad_(False)


def tiny_sm(model: torch.nn.Module, tokenizer: Any, sae: SparseAutoencoder | None = None) -> SteeredModel:
    loaded = LoadedModel(model=model, tokenizer=tokenizer, model_id="tiny-llama", device=torch.device("cpu"),
                         dtype=torch.float32, path=Path("."))
    return SteeredModel(loaded, sae if sae is not None else tiny_sae(model, tokenizer), "tiny-sae")


def plant_feature(sm: SteeredModel, index: int, texts: list[str], char: str = "z") -> int:
    """Make feature `index` of sm.sae a detector of the byte `char`, promoting that byte's token.

    Encoder column: the direction separating hook-site activations at `char`
    positions of `texts` from all other positions, with the bias halfway
    between the two groups (asserted separable). Decoder row: the token's
    unembedding divided by the final norm's weight, so its logit effect ranks
    that token first. Max activations of every feature are re-measured on
    `texts` first (a trained SAE's statistics come from data that holds such
    text). Returns the token id of `char`.
    """
    model, tok, sae = sm.loaded.model, sm.loaded.tokenizer, sm.sae
    all_acts = hook_acts_many(model, tok, texts)
    seen = torch.stack([sae.encode(a[1:]).amax(0) for a in all_acts])
    sae.set_feature_stats(seen.amax(0).clamp(min=1e-3))
    (token,) = tok(char, add_special_tokens=False)["input_ids"]
    pos, neg = [], []
    for text, acts in zip(texts, all_acts):
        ids = [None, *tok(text)["input_ids"]]
        for p in range(1, len(ids)):
            (pos if ids[p] == token else neg).append(acts[p])
    assert pos and neg, "the texts need positions with and without the character"
    P, N = torch.stack(pos), torch.stack(neg)
    u = P.mean(0) - N.mean(0)
    u = u / u.norm()
    lo, hi = float((N @ u).max()), float((P @ u).min())
    assert lo < hi, "the character's positions are not linearly separable here"
    tau = (lo + hi) / 2
    g = model.model.norm.weight
    w = model.get_output_embeddings().weight[token] / g
    with torch.no_grad():
        sae.W_enc[:, index] = u
        sae.b_enc[index] = -tau + float(sae.b_dec @ u)
        sae.W_dec[index] = w / w.norm()
        sae.max_activation[index] = float((P @ u).max()) - tau
    return token


def autosteer_multiplier(sm, index: int, concept: str, candidates=None) -> float:
    """The calibrated multiplier auto-steer gives feature `index` for `concept` (the formula is tested by hand in
    tests/concepts/test_autosteer.py); `candidates`: the search's pool if it was replaced in a test."""
    from steering.concepts import autosteer

    pool = candidates if candidates is not None else autosteer.concept_candidates(sm, concept)
    cand = next(c for c in pool if c.index == index)
    return autosteer.calibrated_multiplier(sm, cand, autosteer.residual_scale(autosteer.neutral_bank_stats(sm)))
