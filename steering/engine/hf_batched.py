"""Any Hugging Face causal LM, continuously batched through its own forward.

The model's forward runs once per step for all rows of the call, with its
keys and values kept in a `KVPool` (the same slot layout as the Llama fast
path: slot s holds its sequence's K/V at absolute positions 0..length-1;
each layer's on that layer's device when a `device_map` spread the model).
Three things make the model's own forward do that:

    cache      a transformers `Cache` whose layers (`PoolLayer`) write the
               step's new K/V [R, kv_heads, N, head_dim] into the rows' slots
               at their own positions (one `index_copy_`) and hand attention
               the view kv[slot0 : slot0 + R, :W] (W: the longest row after
               the step), never a copy of the past;
    masks      a 4D additive mask [R, 1, N, W] per attention kind, built here
               from each row's positions: query j of row r (position
               c_r + j, c_r its cached length) sees keys 0..c_r + j, and on a
               sliding-window layer only keys > c_r + j - window (transformers'
               own rule); masks passed as 4D tensors (or a dict of them, for
               models whose config names `layer_types`) are used as given;
    positions  position_ids [R, N] per row (RoPE or learned positions).

Rows of a prefill are right-padded to the longest chunk: a pad's K/V are not
stored, its query sees what the row's last real token sees (no row of the
mask is empty), and its output is dropped. Logits come only for each row's
last real token (`logits_to_keep` as a [R, 1] index). Clamps run through the
ordinary hooks (`steering.hooks.steering`) with the batch's BatchPlan and the
rows' positions, so a row without clamps is not touched.

A row's result equals the same request alone up to float rounding: the
model's matrix products are not batch-invariant (the Llama fast path's
kernels are), which the tests bound.

This module knows nothing of requests or HTTP.
"""

from __future__ import annotations

import inspect
from contextlib import ExitStack
from typing import Sequence

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache, CacheLayerMixin

from steering.engine.kv_cache import KVPool
from steering.hooks import capture, layer_device, steering
from steering.interventions import BatchPlan
from steering.sae.autoencoder import SparseAutoencoder

SLIDING_KINDS = ("sliding_attention", "chunked_attention")
_NOT_KV = ("linear_attention", "conv", "hybrid", "hybrid_sliding", "mamba", "recurrent")


def kv_shape(config: object) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) of a decoder from its config (Llama, Gemma, Qwen, GPT-2, Mistral, Phi...)."""
    layers = int(getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer"))
    heads = int(getattr(config, "num_attention_heads", None) or getattr(config, "n_head"))
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    hidden = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd"))
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    return layers, kv_heads, head_dim


def unbatchable_reason(model: nn.Module) -> str | None:
    """None if `HFBatchRunner` can run the model (every layer a key/value attention), else why not."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return "no config"
    if getattr(cfg, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    kinds = set(getattr(cfg, "layer_types", None) or ())
    odd = sorted(kinds & set(_NOT_KV))
    if odd:
        return f"layers without a key/value cache ({', '.join(odd)})"
    if "chunked_attention" in kinds:
        return "chunked attention"
    return None


class PoolLayer(CacheLayerMixin):
    """One decoder layer's view of the pool for one forward (see the module docstring)."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, step: "_Step", layer: int):
        super().__init__()
        self.step, self.layer = step, layer
        self.is_initialized = True

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:  # pragma: no cover - never lazy
        return None

    def update(self, key_states: Tensor, value_states: Tensor, *args: object, **kwargs: object) -> tuple[Tensor, Tensor]:
        return self.step.write(self.layer, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.step.width, 0

    def get_seq_length(self) -> int:
        return self.step.width - self.step.queries

    def get_max_length(self) -> int:
        return -1


class _Step:
    """Where one forward's new K/V go in the pool, and the window attention reads."""

    def __init__(self, pool: KVPool, slot0: int, past: Sequence[int], counts: Sequence[int], queries: int):
        rows = len(past)
        self.pool, self.slot0, self.rows, self.queries = pool, slot0, rows, queries
        self.width = max(c + n for c, n in zip(past, counts))
        pool.reserve(self.width)
        keep, dest = [], []
        for r, (c, n) in enumerate(zip(past, counts)):
            keep.extend(r * queries + j for j in range(n))
            dest.extend((slot0 + r) * pool.capacity + c + j for j in range(n))
        self.all_real = len(keep) == rows * queries
        self.keep = torch.tensor(keep, dtype=torch.long)
        self.dest = torch.tensor(dest, dtype=torch.long)
        self._on: dict[torch.device, tuple[Tensor, Tensor]] = {}  # (keep, dest) on each layer's device

    def write(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        store = self.pool.kv[layer]  # [slots, capacity, 2 * kv_heads, head_dim]
        heads = keys.shape[1]
        if 2 * heads != store.shape[2] or keys.shape[-1] != store.shape[3]:
            raise ValueError(f"layer {layer} has keys of shape {tuple(keys.shape)}, not the config's "
                             f"{store.shape[2] // 2} heads x {store.shape[3]}")
        if store.device not in self._on:
            self._on[store.device] = (self.keep.to(store.device), self.dest.to(store.device))
        keep, dest = self._on[store.device]
        new = torch.cat((keys, values), dim=1).transpose(1, 2).reshape(-1, 2 * heads, keys.shape[-1])
        if not self.all_real:
            new = new.index_select(0, keep)
        store.view(-1, 2 * heads, keys.shape[-1]).index_copy_(0, dest, new.to(store.dtype))
        window = store[self.slot0 : self.slot0 + self.rows, : self.width]  # [R, W, 2h, d]
        return window[:, :, :heads].transpose(1, 2), window[:, :, heads:].transpose(1, 2)


def attention_masks(config: object, past: Sequence[int], counts: Sequence[int], queries: int, width: int,
                    dtype: torch.dtype, device: torch.device) -> Tensor | dict[str, Tensor]:
    """Additive masks [R, 1, N, W] (0: attend, dtype's min: not) for rows with `past` cached positions and
    `counts` new tokens each, padded to `queries`; a dict per attention kind when the config has sliding layers."""
    c = torch.tensor(list(past), device=device)[:, None]
    n = torch.tensor(list(counts), device=device)[:, None]
    j = torch.arange(queries, device=device)[None]
    q_pos = c + torch.minimum(j, n - 1)  # [R, N]: a pad sees what its row's last real token sees
    k_pos = torch.arange(width, device=device)[None, None]  # [1, 1, W]
    causal = k_pos <= q_pos[:, :, None]  # [R, N, W]
    floor = torch.finfo(dtype).min

    def additive(allowed: Tensor) -> Tensor:
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, floor)[:, None]

    kinds = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if kinds is not None:
        if window is None or not any(k in SLIDING_KINDS for k in kinds):
            return additive(causal)
        sliding = causal & (k_pos > q_pos[:, :, None] - int(window))
        return {"full_attention": additive(causal), "sliding_attention": additive(sliding)}
    if window:  # every layer slides (Mistral, Phi-3 style configs)
        return additive(causal & (k_pos > q_pos[:, :, None] - int(window)))
    return additive(causal)


class HFBatchRunner:
    """Runs a Hugging Face causal LM's own forward on a KVPool for many rows at once."""

    def __init__(self, model: nn.Module):
        reason = unbatchable_reason(model)
        if reason is not None:
            raise ValueError(f"the batched Hugging Face path cannot run {type(model).__name__}: {reason}")
        self.model = model
        self.config = model.config
        self.n_layers, self.n_kv_heads, self.head_dim = kv_shape(model.config)
        param = next(model.parameters())
        self.device, self.dtype = model.get_input_embeddings().weight.device, param.dtype
        self.layer_devices = [layer_device(model, i) for i in range(self.n_layers)]
        self.max_length = int(getattr(model.config, "max_position_embeddings", None)
                              or getattr(model.config, "n_positions", 2048))
        # transformers renamed the forward's cache argument (past_key_values -> cache) during 5.x.
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def new_pool(self, slots: int, keep: int = 0, max_length: int | None = None) -> KVPool:
        # Zeroed: attention multiplies masked positions' values by 0, and 0 x (uninitialised NaN) is NaN.
        return KVPool(self.n_layers, self.n_kv_heads, self.head_dim, slots, self.dtype, self.device,
                      min(max_length or self.max_length, self.max_length), keep=keep, zero_fill=True,
                      layer_devices=self.layer_devices)

    def position_bytes(self) -> int:
        return KVPool.bytes_per_position(self.n_layers, self.n_kv_heads, self.head_dim, self.dtype)

    def forward(self, pool: KVPool, slot0: int, chunks: Sequence[Sequence[int]], starts: Sequence[int],
                sae: SparseAutoencoder | None, plan: BatchPlan | None, read: Sequence[int] = ()
                ) -> tuple[Tensor, list[Tensor]]:
        """Rows r (slots slot0 + r) take chunks[r] at positions starts[r]..; -> (logits [R, V] of each row's
        last token, site activations [len(chunks[r]), d] before the clamp for each row in `read`)."""
        counts = [len(c) for c in chunks]
        queries = max(counts)
        step = _Step(pool, slot0, starts, counts, queries)
        ids = torch.zeros((len(chunks), queries), dtype=torch.long)
        for r, chunk in enumerate(chunks):
            ids[r, : len(chunk)] = torch.tensor(list(chunk), dtype=torch.long)
        pos = (torch.tensor(list(starts))[:, None] + torch.arange(queries)[None]).clamp(max=pool.max_length - 1)
        ids, pos = ids.to(self.device), pos.to(self.device)
        masks = attention_masks(self.config, starts, counts, queries, step.width, self.dtype, self.device)
        cache = Cache(layers=[PoolLayer(step, layer) for layer in range(self.n_layers)])
        keep: int | Tensor = 1 if queries == 1 else torch.tensor(counts, device=self.device)[:, None] - 1
        with ExitStack() as hooks:
            # The reading hook is attached first, so it sees the site before the clamp's edit.
            store = (hooks.enter_context(capture(self.model, sae.cfg.hook_layer, sae.cfg.hook_site))
                     if read and sae is not None else None)
            if plan is not None and not plan.is_empty and sae is not None:
                # With a device_map the SAE sits on its layer's device, which may not be the embedding's.
                hooks.enter_context(steering(self.model, sae, plan, pos.to(sae.W_dec.device)))
            out = self.model(input_ids=ids, attention_mask=masks, position_ids=pos, use_cache=True,
                             logits_to_keep=keep, **{self.cache_arg: cache})
        sites = [store[0][r, : counts[r]] for r in read] if store else []
        return out.logits[:, -1], sites
