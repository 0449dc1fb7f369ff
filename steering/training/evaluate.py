"""Held-out metrics of an SAE: L0, variance explained, delta CE, dead and dense features.

Definitions (x [n, d]: activations at the SAE's site on held-out tokens, the
same positions as training keeps: not position 0, not outlier norms, see
`harvest.keep_mask`; f = sae.encode(x); x_hat = sae(x)):

    l0                  mean_i #{j : f_ij > 0}
    variance_explained  1 - sum_i ||x_i - x_hat_i||^2 / sum_i ||x_i - mean(x)||^2
    firing_frequency_j  #{i : f_ij > 0} / n
    max_activation_j    max_i f_ij
    dead_fraction       fraction of features with firing_frequency 0
    dense_fraction      fraction with firing_frequency > dense_threshold (0.1)

    delta_ce  = CE(spliced) - CE(clean), in nats: the model's mean next-token
                cross-entropy over every prediction of held-out corpus rows,
                with the kept positions' activations replaced by x_hat (the
                other positions keep their own activations), minus the same
                without the splice. `ce_mean_ablation` replaces the kept
                positions by the mean activation instead, and
                ce_loss_recovered = (CE_mean - CE_spliced) / (CE_mean - CE_clean).

`splice` with `error=True` adds the error term x - x_hat back, which must give
the clean loss (a test checks it). Activation metrics are accumulated in
float64 over batches, so they do not depend on the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from steering.hooks import edit_site
from steering.sae.autoencoder import SparseAutoencoder
from steering.training.harvest import keep_mask


@dataclass
class ActivationMetrics:
    """Running sums over batches of activations; `result()` gives the metrics."""

    d_sae: int
    dense_threshold: float = 0.1
    n: int = 0
    l0_sum: float = 0.0
    err_sq: float = 0.0
    x_sum: Tensor | None = None
    x_sq: float = 0.0
    fires: Tensor = field(init=False)
    max_act: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.fires = torch.zeros(self.d_sae, dtype=torch.float64)
        self.max_act = torch.zeros(self.d_sae)

    def update(self, x: Tensor, f: Tensor, x_hat: Tensor) -> None:
        """x, x_hat [n, d]; f [n, d_sae]."""
        x64 = x.double()
        active = f > 0
        self.n += x.shape[0]
        self.l0_sum += float(active.sum())
        self.err_sq += float((x64 - x_hat.double()).pow(2).sum())
        self.x_sum = x64.sum(0) if self.x_sum is None else self.x_sum + x64.sum(0)
        self.x_sq += float(x64.pow(2).sum())
        self.fires += active.sum(0).double()
        self.max_act = torch.maximum(self.max_act, f.float().amax(0).clamp_min(0))

    def firing_frequency(self) -> Tensor:
        return (self.fires / max(self.n, 1)).float()

    def result(self) -> dict[str, Any]:
        if self.n == 0 or self.x_sum is None:
            raise ValueError("no activations were evaluated")
        total_var = self.x_sq - float(self.x_sum.pow(2).sum()) / self.n
        freq = self.firing_frequency()
        return {
            "l0": self.l0_sum / self.n,
            "variance_explained": 1.0 - self.err_sq / total_var,
            "dead_fraction": float((freq == 0).float().mean()),
            "dense_fraction": float((freq > self.dense_threshold).float().mean()),
            "d_sae": self.d_sae,
            "tokens": self.n,
        }


def activation_metrics(sae: SparseAutoencoder, batches: Iterable[Tensor], dense_threshold: float = 0.1) -> ActivationMetrics:
    """Accumulate `ActivationMetrics` over batches of activations [n, d] (input space)."""
    acc = ActivationMetrics(sae.d_sae, dense_threshold)
    with torch.no_grad():
        for x in batches:
            x = x.to(sae.W_enc.dtype)
            x_n, info = sae.normalize(x)
            f = sae.activate(sae.pre_activations(x_n))
            acc.update(x, f, sae.denormalize(f @ sae.W_dec + sae.b_dec, info))
    return acc


# ------------------------------------------------------------------ splicing
def splice(sae: SparseAutoencoder | None, hidden: Tensor, keep: Tensor, *, error: bool = False,
           mean: Tensor | None = None) -> Tensor:
    """A new hidden [B, T, d]: kept positions replaced by x_hat (+ the error term), or by `mean`."""
    if mean is not None:
        new = mean.to(hidden.dtype).expand_as(hidden)
    else:
        x_hat = sae(hidden.to(sae.W_enc.dtype)).to(hidden.dtype)
        new = x_hat + (hidden - x_hat) if error else x_hat
    return torch.where(keep.unsqueeze(-1), new, hidden)


def next_token_ce(logits: Tensor, tokens: Tensor) -> tuple[float, int]:
    """Summed cross-entropy of predicting tokens[:, 1:] from logits[:, :-1], and the count."""
    lp = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    return float(F.cross_entropy(lp, tokens[:, 1:].reshape(-1), reduction="sum")), lp.shape[0]


def ce_losses(
    model: nn.Module,
    sae: SparseAutoencoder,
    rows: np.ndarray,
    *,
    batch_size: int = 16,
    outlier_factor: float = 10.0,
    mean: Tensor | None = None,
    error: bool = False,
    progress: bool = False,
) -> dict[str, float]:
    """Mean next-token CE over rows int [N, T]: clean, spliced and (with `mean`) mean-ablated."""
    layer, site = sae.cfg.hook_layer, sae.cfg.hook_site
    device = next(model.parameters()).device
    sums = {"clean": 0.0, "spliced": 0.0, "mean_ablation": 0.0}
    count = 0
    modes = ["clean", "spliced"] + (["mean_ablation"] if mean is not None else [])
    starts = range(0, rows.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="delta CE", unit="batch")
    with torch.no_grad():
        for start in starts:
            tokens = torch.from_numpy(np.ascontiguousarray(rows[start : start + batch_size], dtype=np.int64)).to(device)
            for mode in modes:
                def fn(hidden: Tensor, mode: str = mode) -> Tensor | None:
                    if mode == "clean":
                        return None
                    keep = keep_mask(hidden, outlier_factor)
                    return splice(sae, hidden, keep, error=error, mean=mean if mode == "mean_ablation" else None)

                with edit_site(model, layer, site, fn):
                    logits = model(input_ids=tokens, use_cache=False).logits
                total, n = next_token_ce(logits, tokens)
                sums[mode] += total
            count += n
    out = {f"ce_{m}": sums[m] / count for m in modes}
    out["delta_ce"] = out["ce_spliced"] - out["ce_clean"]
    if mean is not None:
        denom = out["ce_mean_ablation"] - out["ce_clean"]
        out["ce_loss_recovered"] = (out["ce_mean_ablation"] - out["ce_spliced"]) / denom if denom > 0 else float("nan")
    out["ce_tokens"] = count
    return out
