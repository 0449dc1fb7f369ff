"""Harvest activations at one hook site: the forward stops there, results go to disk.

For corpus rows tokens [B, T] the model runs only up to decoder layer
`layer` (`hooks.capture(..., stop=True)`), which is more than twice as fast as
a full forward at the middle of the network. Of hidden [B, T, d] we keep

    keep[b, t] = (t > 0) and ||hidden[b, t]|| <= outlier_factor * median_b',t'>0 ||hidden||

Position 0 is an attention sink in SmolLM2 (norms ~2.5e4 after layer 15),
and a few other positions have norms far above the rest; both would dominate
any reconstruction loss. The median is taken over the batch's positions > 0.
The same rule (`keep_mask`) decides which positions evaluation splices.

Kept activations go to an `ActivationWriter` (float16 chunks); the harvest
resumes after the last chunk written. This module does not load models.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from steering.hooks import capture, run_until_capture
from steering.training.store import ActivationWriter


def keep_mask(hidden: Tensor, outlier_factor: float = 10.0) -> Tensor:
    """hidden [B, T, d] -> bool [B, T]: positions > 0 whose norm is within outlier_factor x median."""
    norms = hidden.float().norm(dim=-1)
    keep = torch.ones_like(norms, dtype=torch.bool)
    keep[:, 0] = False
    if norms.shape[1] > 1 and outlier_factor > 0:
        median = norms[:, 1:].median()
        keep &= norms <= outlier_factor * median
    return keep


def kept_activations(hidden: Tensor, row0: int, outlier_factor: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Of hidden [B, T, d] for corpus rows row0.., the kept activations float32 [n, d], their
    (row, position) index int [n, 2], and how many positions > 0 were dropped as outliers."""
    keep = keep_mask(hidden, outlier_factor)
    b_idx, t_idx = torch.nonzero(keep, as_tuple=True)
    acts = hidden[b_idx, t_idx].float().cpu().numpy()
    index = np.stack([(b_idx + row0).cpu().numpy(), t_idx.cpu().numpy()], axis=1)
    return acts, index, int((~keep[:, 1:]).sum())


def hidden_at(model: nn.Module, tokens: Tensor, layer: int, site: str = "resid_post") -> Tensor:
    """The activations [B, T, d] at the site, with the forward stopped there."""
    with capture(model, layer, site, stop=True) as store:
        run_until_capture(model, input_ids=tokens, use_cache=False)
    if not store:
        raise RuntimeError(f"the forward never reached layer {layer} {site}")
    return store[0]


def harvest(
    model: nn.Module,
    rows: np.ndarray,
    out_dir: str | Path,
    *,
    layer: int,
    site: str = "resid_post",
    batch_size: int = 32,
    outlier_factor: float = 10.0,
    chunk_tokens: int = 65_536,
    max_tokens: int | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run rows int [N, T] through the model up to the site; write kept activations to out_dir.

    Stops after the batch at which `max_tokens` activations are stored (all rows
    when None). Resumes from out_dir's progress, and extends a complete folder
    when asked for more tokens. Returns the folder's metadata,
    including tokens/s (model tokens processed per second, this call only).
    """
    done = Path(out_dir) / "meta.json"
    if done.exists():  # complete: return it, unless more tokens are asked for and rows remain
        previous = json.loads(done.read_text())
        wanted = max_tokens if max_tokens is not None else rows.size
        if previous["n_tokens"] >= wanted or previous["rows_done"] >= rows.shape[0]:
            return previous
    d_model = int(model.config.hidden_size)
    writer = ActivationWriter(out_dir, d_model, chunk_tokens)
    n_rows, seq_len = rows.shape
    limit = max_tokens if max_tokens is not None else n_rows * seq_len
    start_row, written = writer.rows_done, writer.tokens_written
    device = next(model.parameters()).device
    dropped = 0
    processed = 0
    t0 = time.perf_counter()
    bar = tqdm(total=limit, initial=min(written, limit), unit="tok", unit_scale=True,
               desc=f"harvest L{layer}", disable=not progress, smoothing=0.05)
    row = start_row
    while row < n_rows and written < limit:
        batch = torch.from_numpy(np.ascontiguousarray(rows[row : row + batch_size], dtype=np.int64)).to(device)
        acts, index, n_dropped = kept_activations(hidden_at(model, batch, layer, site), row, outlier_factor)
        dropped += n_dropped
        row += batch.shape[0]
        writer.append(acts, index, rows_done=row)
        written += acts.shape[0]
        processed += batch.numel()
        bar.update(acts.shape[0])
        bar.set_postfix(model_tok_s=f"{processed / (time.perf_counter() - t0):.0f}")
    bar.close()
    seconds = time.perf_counter() - t0
    info = {
        **(meta or {}),
        "layer": layer,
        "site": site,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "outlier_factor": outlier_factor,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "harvest_seconds_last_run": round(seconds, 2),
        "harvest_tokens_per_s": round(processed / seconds, 1) if seconds > 0 else None,
        "outliers_dropped_last_run": dropped,
        "threads": torch.get_num_threads(),
    }
    return writer.finish(info)
