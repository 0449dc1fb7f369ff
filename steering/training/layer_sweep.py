"""Choose the SAE's layer by measurement: one small SAE per candidate layer, same budget.

For each candidate layer L (one forward per batch captures every layer, and
stops after the deepest):

    1. harvest `train_tokens` training and `eval_tokens` held-out activations
       at L (the `keep_mask` rule of `harvest`);
    2. train a BatchTopK SAE (d_sae, k) for `token_steps` token-steps, with the
       recipe of `train` (same seed for every layer);
    3. reconstruction, on the held-out activations and rows: L0, variance
       explained, delta CE (`evaluate.ce_losses`), dead fraction;
    4. steerability: for each probe concept, `concepts.find_concept_features`
       ranks this SAE's features by specificity (fires more on text about the
       concept than on unrelated text, across the text rather than on the word
       only) x logit score (its decoder direction promotes the concept's
       tokens); `concept_score` is the best candidate's score, averaged over
       the concepts.

Reconstruction alone favours early layers (their activations are closer to
the token embeddings and easy to reconstruct) and says nothing about whether a
clamp turns text towards a concept; the concept score measures the second,
the delta CE the first. The per-layer table is the measurement; the choice
rule is the caller's (the CLI prints both columns).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from steering.hooks import capture, run_until_capture
from steering.training.evaluate import activation_metrics, ce_losses
from steering.training.harvest import kept_activations
from steering.training.store import ActivationStore, ActivationWriter
from steering.training.train import TrainConfig, train

if TYPE_CHECKING:
    from steering.steered_model import SteeredModel

PROBE_CONCEPTS: tuple[str, ...] = ("sports", "mountains", "dogs", "music", "food", "happiness", "the ocean", "robots")


def _small_sae() -> TrainConfig:
    return TrainConfig(d_sae=4096, k=32, total_tokens=400_000, batch_size=1024)


@dataclass
class SweepBudget:
    """Tokens harvested per layer, and the recipe of each layer's SAE (`train`: d_sae, k, token-steps
    as total_tokens, batch, lr, seed; its warm-up, calibration and dead-feature window are scaled to
    the budget in `layer_sweep`)."""

    train_tokens: int = 200_000
    eval_tokens: int = 30_000
    ce_tokens: int = 16_384
    harvest_batch: int = 16
    outlier_factor: float = 10.0
    train: TrainConfig = field(default_factory=_small_sae)


def harvest_layers(model: nn.Module, rows: np.ndarray, out: Path, layers: Sequence[int], max_tokens: int,
                   batch_size: int, outlier_factor: float) -> dict[int, ActivationStore]:
    """One forward per batch records every layer (stopping after the deepest); -> a store per layer.

    A complete earlier harvest in `out` (same layers) is reused; a partial one is started over.
    """
    if all((out / f"L{layer}" / "meta.json").exists() for layer in layers):
        return {layer: ActivationStore(out / f"L{layer}") for layer in layers}
    shutil.rmtree(out, ignore_errors=True)
    d_model = int(model.config.hidden_size)
    writers = {layer: ActivationWriter(out / f"L{layer}", d_model) for layer in layers}
    device = next(model.parameters()).device
    written = {layer: 0 for layer in layers}
    deepest = max(layers)
    row = 0
    while row < rows.shape[0] and min(written.values()) < max_tokens:
        batch = torch.from_numpy(np.ascontiguousarray(rows[row : row + batch_size], dtype=np.int64)).to(device)
        with contextlib.ExitStack() as stack:  # every layer recorded; only the deepest stops the forward
            stores = {layer: stack.enter_context(capture(model, layer, "resid_post", stop=layer == deepest))
                      for layer in layers}
            run_until_capture(model, input_ids=batch, use_cache=False)
        for layer in layers:
            acts, index, _ = kept_activations(stores[layer][0], row, outlier_factor)
            writers[layer].append(acts, index, rows_done=row + batch.shape[0])
            written[layer] += acts.shape[0]
        row += batch.shape[0]
    for layer, writer in writers.items():
        writer.finish({"layer": layer, "site": "resid_post", "outlier_factor": outlier_factor})
    return {layer: ActivationStore(out / f"L{layer}") for layer in layers}


def concept_score(sm: "SteeredModel", concepts: Sequence[str]) -> dict[str, Any]:
    """The best concept candidate per concept (score, specificity, word share), and the mean score."""
    from steering.concepts.search import find_concept_features

    per = {}
    for concept in concepts:
        best = find_concept_features(sm, concept, limit=1)
        per[concept] = ({"feature": best[0].index, "score": round(best[0].score, 4),
                         "specificity": round(best[0].specificity, 4), "logit_rank": best[0].logit_rank,
                         "word_share": None if best[0].word_share is None else round(best[0].word_share, 3)}
                        if best else {"feature": None, "score": 0.0})
    return {"concept_score": float(np.mean([p["score"] for p in per.values()])), "concepts": per}


def layer_sweep(loaded: Any, train_rows: np.ndarray, eval_rows: np.ndarray, layers: Sequence[int], work_dir: str | Path,
                budget: SweepBudget = SweepBudget(), concepts: Sequence[str] = PROBE_CONCEPTS,
                progress: bool = True) -> list[dict[str, Any]]:
    """The per-layer table of the module docstring. `loaded` is a `steering.models.LoadedModel`."""
    from steering.steered_model import SteeredModel

    work = Path(work_dir)
    model = loaded.model
    layers = sorted(set(int(x) for x in layers))
    b = budget
    t0 = time.perf_counter()
    train_stores = harvest_layers(model, train_rows, work / "train", layers, b.train_tokens, b.harvest_batch, b.outlier_factor)
    eval_stores = harvest_layers(model, eval_rows, work / "eval", layers, b.eval_tokens, b.harvest_batch, b.outlier_factor)
    harvest_s = time.perf_counter() - t0
    seq_len = eval_rows.shape[1]
    ce_rows = eval_rows[: max(1, b.ce_tokens // seq_len)]
    table = []
    for layer in layers:
        steps = b.train.steps(b.train_tokens)
        cfg = dataclasses.replace(b.train, warmup_steps=min(100, max(1, steps // 10)), calibration_batches=8,
                                  dead_tokens=min(200_000, b.train_tokens // 2))
        t1 = time.perf_counter()
        sae, _ = train(train_stores[layer], work / "runs" / f"L{layer}", cfg, progress=progress,
                       sae_cfg={"hook_layer": layer, "hook_site": "resid_post", "model_name": loaded.model_id})
        train_s = time.perf_counter() - t1
        acc = activation_metrics(sae, eval_stores[layer].slices(2048))
        sae.set_feature_stats(acc.max_act, acc.firing_frequency())
        metrics = acc.result()
        ce = ce_losses(model, sae, ce_rows, outlier_factor=b.outlier_factor)
        steer = concept_score(SteeredModel(loaded, sae, f"sweep-L{layer}", "layer sweep"), concepts)
        table.append({"layer": layer, "l0": round(metrics["l0"], 2),
                      "variance_explained": round(metrics["variance_explained"], 4),
                      "delta_ce": round(ce["delta_ce"], 4), "dead_fraction": round(metrics["dead_fraction"], 4),
                      "concept_score": round(steer["concept_score"], 4), "concepts": steer["concepts"],
                      "train_seconds": round(train_s, 1), "train_tokens": len(train_stores[layer]),
                      "eval_tokens": metrics["tokens"], "ce_tokens": ce["ce_tokens"]})
    for row in table:
        row["harvest_seconds_all_layers"] = round(harvest_s, 1)
    return table
