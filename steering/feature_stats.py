"""Feature statistics for an SAE that ships without them, measured once on sample text.

A clamp's `max` unit needs each feature's largest activation. SAEs trained
here ship it (`feature_stats.safetensors`); public ones mostly do not (Gemma
Scope, sparsify, most SAELens releases). For those, the server runs the
package's own sample text (the prompt sets under steering/data, a few
thousand tokens, no download) through the model, encodes every token's
activation at the SAE's site except each text's first (an attention sink
whose activations are outliers), and keeps per feature

    max_activation_i   = max over sample tokens t of f_i(x_t)        (NaN if f_i never fired)
    firing_frequency_i = share of sample tokens with f_i(x_t) > 0

The result is cached in `estimated_feature_stats.safetensors` next to the
SAE (or, where that folder is read-only, under the user cache keyed by the
folder's path), with the number of tokens and the model in its metadata, so
the measurement runs once per SAE and model. A feature that never fired on
the sample keeps no max, and a `max` clamp on it is refused (use `raw`).

This runs a model, so it lives beside `steering.steered_model` (which calls
it when it attaches an SAE), not in `steering.sae`, which only moves SAEs
between files and modules.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from steering.hooks import activations_at
from steering.sae.autoencoder import SparseAutoencoder

STATS_CACHE_FILE = "estimated_feature_stats.safetensors"
SAMPLE_TOKENS = 8192  # at most this many tokens are read
_SAMPLE_DIRS = ("monitor_prompts", "attribution")
_SAMPLE_FILES = ("neutral_prompts.txt",)


@dataclass(frozen=True)
class EstimatedStats:
    """Where the `max` unit's scale came from, for responses and logs."""

    tokens: int  # sample tokens read
    fired: int  # features that fired at least once
    path: Path  # the cache file
    reused: bool  # read from the cache rather than measured now

    def describe(self) -> str:
        return (f"estimated by this server from {self.tokens} tokens of sample text ({self.fired} features fired; "
                f"cached in {self.path})")


def sample_texts() -> list[str]:
    """The package's sample text: one entry per non-empty line of the shipped prompt files."""
    root = resources.files("steering") / "data"
    files = [root / name for name in _SAMPLE_FILES]
    for folder in _SAMPLE_DIRS:
        files += sorted((p for p in (root / folder).iterdir() if p.name.endswith(".txt")), key=lambda p: p.name)
    lines: list[str] = []
    for f in files:
        lines += [line.strip() for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines


def measure_stats(model: nn.Module, tokenizer: Any, sae: SparseAutoencoder, texts: list[str],
                  max_tokens: int = SAMPLE_TOKENS) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(max_activation [d_sae] with NaN for silent features, firing_frequency [d_sae], tokens read)."""
    cfg = model.config
    context = int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048)
    rows, total = [], 0
    for text in texts:
        ids = tokenizer(text)["input_ids"][: min(context, max_tokens - total + 1)]
        if len(ids) < 2:
            continue
        rows.append(ids)
        total += len(ids) - 1
        if total >= max_tokens:
            break
    peak = torch.zeros(sae.d_sae)
    fired = torch.zeros(sae.d_sae)
    with torch.inference_mode():
        for _, acts in activations_at(model, sae.cfg.hook_layer, sae.cfg.hook_site, rows):
            f = sae.encode(acts[1:].to(sae.W_enc.dtype)).float().cpu()  # [T - 1, d_sae]; position 0 is a sink
            peak = torch.maximum(peak, f.amax(0))
            fired += (f > 0).sum(0)
    max_activation = torch.where(peak > 0, peak, torch.full_like(peak, float("nan")))
    return max_activation, fired / max(total, 1), total


def cache_path(sae_dir: Path, cache_root: Path | None = None) -> Path:
    """The cache file: next to the SAE when that folder is writable, else under the user cache."""
    if os.access(sae_dir, os.W_OK):
        return sae_dir / STATS_CACHE_FILE
    root = cache_root or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sae-steering" / "feature-stats"
    key = hashlib.sha256(str(sae_dir.resolve()).encode()).hexdigest()[:16]
    return root / key / STATS_CACHE_FILE


def ensure_max_activations(model: nn.Module, tokenizer: Any, sae: SparseAutoencoder, sae_dir: Path, model_id: str,
                           cache_root: Path | None = None) -> EstimatedStats | None:
    """Install estimated statistics in an SAE that has no max activation for any feature (None if it has its
    own): read from the cache when it was measured for this model and SAE width, else measure and cache."""
    if bool(torch.isfinite(sae.max_activation).any()):
        return None
    path = cache_path(sae_dir, cache_root)
    if path.exists():
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("model") == model_id and f.get_tensor("max_activation").numel() == sae.d_sae:
                max_act, freq = f.get_tensor("max_activation"), f.get_tensor("firing_frequency")
                _install(sae, max_act, freq)
                return EstimatedStats(int(meta.get("tokens", 0)), int(torch.isfinite(max_act).sum()), path, True)
    max_act, freq, tokens = measure_stats(model, tokenizer, sae, sample_texts())
    _install(sae, max_act, freq)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"max_activation": max_act.contiguous(), "firing_frequency": freq.contiguous()}, str(tmp),
              metadata={"model": model_id, "tokens": str(tokens), "source": "steering.feature_stats"})
    tmp.replace(path)
    return EstimatedStats(tokens, int(torch.isfinite(max_act).sum()), path, False)


def _install(sae: SparseAutoencoder, max_activation: torch.Tensor, frequency: torch.Tensor) -> None:
    # A firing frequency the SAE ships (SAELens' sparsity file) is measured on far more text: it stays.
    own_frequency = bool(torch.isfinite(sae.firing_frequency).any())
    sae.set_feature_stats(max_activation.to(sae.max_activation), None if own_frequency else frequency.to(sae.firing_frequency))
