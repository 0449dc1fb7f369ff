"""Grow a trained SAE by new features that explain what it leaves out.

A dictionary trained on a corpus that barely mentions a concept has no feature
for it; retraining all of it on a grown corpus takes hours on a small CPU. An
extension keeps the S trained features as they are (same encoder, decoder and
thresholds, so every preset and index keeps its meaning) and trains N new
ones on the base SAE's error, on a mix of the old corpus and the new text.

In the base SAE's normalised units (x_n = c x, b_dec its decoder bias):

    f        = base.encode(x)                                   [B, S]  (frozen)
    e        = x_n - (f @ W_dec + b_dec)                        [B, d]  the base's error
    pre'     = (x_n - b_dec) @ W_enc' + b_enc'                  [B, N]
    f'       = BatchTopK(pre', k' B)                            [B, N]  k' new features a token on average
    loss     = mean_tokens || e - f' @ W_dec' ||^2
    W_dec'   rows kept at unit norm

The new encoder reads the input as the old one does, so the grown SAE is an
ordinary SAE of S + N features: W_enc = [W_enc | W_enc'], W_dec = [W_dec ; W_dec'],
one JumpReLU threshold per feature (the base's, then theta' for the new ones,
calibrated so that k' new features fire per token on average). Its
reconstruction is the base's plus f' @ W_dec'.

Training reads every harvested token once to compute e (one base encode), then
takes epochs x T / batch_size Adam steps on batches drawn from the (x_n - b_dec,
e) pairs held in memory (T tokens; 2 x T x d float32 values).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor

from steering.errors import ParameterError
from steering.sae.autoencoder import SAEConfig, SparseAutoencoder
from steering.training.store import ActivationStore


@dataclass(frozen=True)
class ExtensionConfig:
    n_features: int = 512
    k: float = 2.0  # new features per token, on average over a batch
    lr: float = 1e-3
    batch_size: int = 2048
    epochs: float = 8.0
    warmup_steps: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_features", "k", "lr", "batch_size", "epochs", "warmup_steps"):
            if not getattr(self, name) > 0:
                raise ParameterError(f"{name} must be positive, got {getattr(self, name)}", name)
        if self.k > self.n_features:
            raise ParameterError(f"k ({self.k}) cannot exceed n_features ({self.n_features})", "k")


def base_errors(base: SparseAutoencoder, stores: Iterable[ActivationStore], batch_size: int = 4096
                ) -> tuple[Tensor, Tensor, list[int]]:
    """Every stored token's encoder input h = x_n - b_dec [T, d] and the base's error e [T, d] (float32);
    the token count of each store."""
    hs, es, counts = [], [], []
    with torch.no_grad():
        for store in stores:
            for start in range(0, len(store), batch_size):
                x = store.get(np.arange(start, min(start + batch_size, len(store))))
                x_n, _ = base.normalize(x)
                f = base.activate(base.pre_activations(x_n))
                hs.append(base.encoder_input(x_n))
                es.append(x_n - (f @ base.W_dec + base.b_dec))
            counts.append(len(store))
    return torch.cat(hs).float(), torch.cat(es).float(), counts


def _batch_topk(pre: Tensor, k_total: int) -> Tensor:
    """relu(pre) kept at its k_total largest entries over the whole batch, zero elsewhere."""
    flat = torch.relu(pre).reshape(-1)
    k_total = min(k_total, flat.numel())
    kth = flat.topk(k_total).values[-1]
    return pre * (pre >= kth).to(pre.dtype) * (pre > 0).to(pre.dtype)


def train_extension(h: Tensor, e: Tensor, cfg: ExtensionConfig, progress: bool = True) -> dict[str, Any]:
    """Train N new features on (h, e) pairs; returns their parameters, threshold and the training log."""
    gen = torch.Generator().manual_seed(cfg.seed)
    T, d = h.shape
    N = cfg.n_features
    # Decoder rows start at the directions of randomly drawn errors: each new feature begins on something the
    # base misses, which keeps few of them dead with no auxiliary loss.
    pick = torch.randperm(T, generator=gen)[:N]
    W_dec = e[pick] / e[pick].norm(dim=-1, keepdim=True).clamp_min(1e-8)
    W_enc = (W_dec.T * 0.1).clone().requires_grad_(True)
    b_enc = torch.zeros(N, requires_grad=True)
    W_dec = W_dec.clone().requires_grad_(True)
    opt = torch.optim.Adam([W_enc, b_enc, W_dec], lr=cfg.lr)
    steps = max(1, int(cfg.epochs * T / cfg.batch_size))
    e_var = float(e.var(0).sum())
    log: list[dict[str, Any]] = []
    fired = torch.zeros(N, dtype=torch.bool)
    start_time = time.perf_counter()
    for step in range(steps):
        frac = step / steps
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) * (1.0 if frac < 0.8 else (1 - frac) / 0.2)
        for group in opt.param_groups:
            group["lr"] = lr
        rows = torch.randint(0, T, (cfg.batch_size,), generator=gen)
        f = _batch_topk(h[rows] @ W_enc + b_enc, int(round(cfg.k * cfg.batch_size)))
        err = e[rows] - f @ W_dec
        loss = err.pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        fired |= (f > 0).any(0)
        if step % 50 == 0 or step == steps - 1:
            value = float(loss.detach())
            entry = {"step": step + 1, "loss": value, "error_explained": 1 - value / e_var,
                     "lr": lr, "fired_share": float(fired.float().mean())}
            log.append(entry)
            fired.zero_()
            if progress:
                print(f"\rextension step {step + 1}/{steps} loss {entry['loss']:.3f} "
                      f"error explained {entry['error_explained']:.3f}", end="", flush=True)
    if progress:
        print()
    with torch.no_grad():
        theta = calibrate(h, W_enc, b_enc, cfg.k, gen)
    return {"W_enc": W_enc.detach(), "b_enc": b_enc.detach(), "W_dec": W_dec.detach(), "threshold": theta,
            "log": log, "steps": steps, "tokens": T, "train_seconds": time.perf_counter() - start_time,
            "config": asdict(cfg)}


def calibrate(h: Tensor, W_enc: Tensor, b_enc: Tensor, k: float, gen: torch.Generator, n: int = 65_536) -> float:
    """theta with (pre' > theta) true k times per token on average over n drawn tokens."""
    rows = torch.randperm(h.shape[0], generator=gen)[: min(n, h.shape[0])]
    pre = (h[rows] @ W_enc + b_enc).reshape(-1)
    count = max(1, min(int(round(k * rows.numel())), pre.numel()))
    return float(pre.topk(count).values[-1].clamp_min(1e-6))


def grown_sae(base: SparseAutoencoder, ext: dict[str, Any], metadata: dict[str, Any]) -> SparseAutoencoder:
    """The base SAE with the new features appended (indices S .. S+N-1); statistics are NaN for the new ones."""
    N = ext["W_enc"].shape[1]
    cfg_dict = base.cfg.to_dict()
    cfg_dict.update(d_sae=base.d_sae + N, metadata={**base.cfg.metadata, **metadata})
    sae = SparseAutoencoder(SAEConfig.from_dict(cfg_dict))
    dtype = sae.W_enc.dtype
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([base.W_enc.detach(), ext["W_enc"].to(dtype)], dim=1))
        sae.b_enc.copy_(torch.cat([base.b_enc.detach(), ext["b_enc"].to(dtype)]))
        sae.W_dec.copy_(torch.cat([base.W_dec.detach(), ext["W_dec"].to(dtype)]))
        sae.b_dec.copy_(base.b_dec.detach())
        theta = torch.full((N,), ext["threshold"], dtype=dtype)
        sae.threshold.copy_(torch.cat([base.threshold.detach(), theta]))
        nan = torch.full((N,), math.nan)
        sae.max_activation.copy_(torch.cat([base.max_activation.float(), nan]))
        sae.firing_frequency.copy_(torch.cat([base.firing_frequency.float(), nan]))
    return sae


def new_features_only(grown: SparseAutoencoder, start: int) -> SparseAutoencoder:
    """A view of features start.. of a grown SAE as an SAE of their own (same input scale and b_dec)."""
    cfg_dict = grown.cfg.to_dict()
    cfg_dict.update(d_sae=grown.d_sae - start)
    if cfg_dict.get("k") and cfg_dict["k"] > cfg_dict["d_sae"]:
        cfg_dict["k"] = cfg_dict["d_sae"]
    part = SparseAutoencoder(SAEConfig.from_dict(cfg_dict))
    with torch.no_grad():
        part.W_enc.copy_(grown.W_enc[:, start:])
        part.b_enc.copy_(grown.b_enc[start:])
        part.W_dec.copy_(grown.W_dec[start:])
        part.b_dec.copy_(grown.b_dec)
        part.threshold.copy_(grown.threshold[start:])
    return part
