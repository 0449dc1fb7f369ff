"""What the scheduler calls to run the model: prefill newcomers, decode many.

Both backends keep one KV slot per sequence and offer the same calls:

    prefill(slot0, chunks, starts, plan, row_plans, read) -> (logits [R, V], sites)  (row r: chunks[r]
                                                 at positions starts[r].., in slot slot0 + r; its last token's logits)
    decode(ids, positions, plan, row_plans, read) -> (logits [B, V], sites) (rows in slots 0..B-1)
    move(src, dst, length)                      a sequence changes slot
    release()                                   free all KV memory
    reuse_prefix(slot, prompt, variant)  -> L   copy a cached prompt prefix into a slot
    remember_prefix(slot, prompt, variant)      offer a prefilled prompt to the cache

`read` lists the rows (of the call) whose activations at the SAE's site,
before its edit, come back in `sites`, one [T_r, d] tensor each in `read`'s
order (inspection and monitors; `steering.engine.readout`).

Both run one forward per call for all its rows, with per-row clamps from
the batch's BatchPlan, over a `KVPool` (slot s: its sequence's K/V at
positions 0..length-1) and an optional prefix cache
(`steering.engine.kv_cache.PrefixCache`). `FastBackend` runs Llama-family
models through `LlamaRunner` (fused weights and batch-invariant C kernels);
`HFBackend` runs any other causal LM with a key/value cache through its own
Hugging Face forward (`steering.engine.hf_batched.HFBatchRunner`: a cache
that writes into the pool, per-row masks and positions, clamps through
`steering.hooks`). `make_backend` picks one. Fused weights are built once
per model and shared (the model is read-only after loading).
"""

from __future__ import annotations

import threading
import weakref
from typing import Protocol, Sequence

import torch
from torch import Tensor, nn

from steering.engine.hf_batched import HFBatchRunner, unbatchable_reason
from steering.engine.kv_cache import BLOCK, PrefixCache, positions_within
from steering.engine.llama.runner import LlamaRunner, unsupported_reason
from steering.errors import SteeringError
from steering.interventions import BatchPlan
from steering.sae.autoencoder import SparseAutoencoder


class Backend(Protocol):
    max_length: int
    vocab_size: int  # logits per row (the LM head's rows; a tokenizer may have fewer)

    def prefill(
        self, slot0: int, chunks: Sequence[Sequence[int]], starts: Sequence[int], plan: BatchPlan | None,
        row_plans: Sequence[BatchPlan | None], read: Sequence[int] = (),
    ) -> tuple[Tensor, list[Tensor]]: ...

    def decode(
        self, ids: Sequence[int], positions: Sequence[int], plan: BatchPlan | None,
        row_plans: Sequence[BatchPlan | None], read: Sequence[int] = (),
    ) -> tuple[Tensor, list[Tensor]]: ...

    def move(self, src: int, dst: int, length: int) -> None: ...

    def release(self) -> None: ...

    def reuse_prefix(self, slot: int, prompt: Sequence[int], variant: object) -> int: ...

    def remember_prefix(self, slot: int, prompt: Sequence[int], variant: object) -> None: ...


class PooledBackend:
    """A runner over a KVPool with `slots` slots, and an optional prefix cache: what both backends share.

    `runner` offers new_pool(slots, keep, max_length), position_bytes(), max_length, device and model.
    """

    def __init__(self, runner: LlamaRunner | HFBatchRunner, sae: SparseAutoencoder | None, slots: int,
                 prefix_cache: PrefixCache | None = None, kv_keep: int = 0, max_kv_bytes: int | None = None):
        self.runner, self.sae, self.prefix_cache = runner, sae, prefix_cache
        self.max_length = kv_bounded_length(runner.max_length, slots, runner.position_bytes(), max_kv_bytes)
        self.pool = runner.new_pool(slots, keep=kv_keep, max_length=self.max_length)
        self.vocab_size = int(runner.model.get_output_embeddings().weight.shape[0])
        self.device = runner.device

    def move(self, src: int, dst: int, length: int) -> None:
        self.pool.move(src, dst, length)

    def release(self) -> None:
        self.pool.release()

    def reuse_prefix(self, slot: int, prompt: Sequence[int], variant: object) -> int:
        hit = self.prefix_cache.lookup(prompt, variant) if self.prefix_cache is not None else None
        if hit is None:
            return 0
        kv, length = hit
        self.pool.reserve(length)
        for layer, t in enumerate(self.pool.kv):
            t[slot, :length].copy_(kv[layer, :length])
        return length

    def remember_prefix(self, slot: int, prompt: Sequence[int], variant: object) -> None:
        length = self.prefix_cache.wants(prompt, variant) if self.prefix_cache is not None else 0
        if length:
            self.prefix_cache.store(prompt, variant,
                                    torch.stack([t[slot, :length].to(self.pool.device) for t in self.pool.kv]))


class FastBackend(PooledBackend):
    """LlamaRunner (its own fused forward and kernels) over the pool."""

    runner: LlamaRunner

    def _forward(self, slot0: int, ids: Tensor, pos: Tensor, plan: BatchPlan | None, read: Sequence[int],
                 lengths: Sequence[int], last: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        if not read:
            return self.runner.forward(self.pool, slot0, ids, pos, self.sae, plan, last), []
        rows = torch.tensor(list(read), dtype=torch.long, device=self.device)
        logits, site = self.runner.forward(self.pool, slot0, ids, pos, self.sae, plan, last, rows)
        return logits, [site[k, : lengths[r]] for k, r in enumerate(read)]

    def prefill(self, slot0, chunks, starts, plan, row_plans, read=()):  # type: ignore[no-untyped-def]
        # Rows are right-padded to the longest chunk. A pad token's K/V land past its row's
        # prompt, where nothing attends to them before the row's own next token overwrites them.
        width = max(len(c) for c in chunks)
        ids = torch.zeros((len(chunks), width), dtype=torch.long)
        pos = torch.empty((len(chunks), width), dtype=torch.long)
        for r, (chunk, start) in enumerate(zip(chunks, starts)):
            ids[r, : len(chunk)] = torch.tensor(list(chunk), dtype=torch.long)
            pos[r] = torch.arange(start, start + width).clamp(max=self.max_length - 1)
        last = torch.tensor([len(c) - 1 for c in chunks], dtype=torch.long)
        return self._forward(slot0, ids.to(self.device), pos.to(self.device), plan, read, [len(c) for c in chunks], last)

    def decode(self, ids, positions, plan, row_plans, read=()):  # type: ignore[no-untyped-def]
        x = torch.tensor(list(ids), dtype=torch.long, device=self.device)[:, None]
        pos = torch.tensor(list(positions), dtype=torch.long, device=self.device)[:, None]
        return self._forward(0, x, pos, plan, read, [1] * len(ids))


class HFBackend(PooledBackend):
    """The model's own Hugging Face forward, batched (`HFBatchRunner`): any causal LM with a K/V cache."""

    runner: HFBatchRunner

    def prefill(self, slot0, chunks, starts, plan, row_plans, read=()):  # type: ignore[no-untyped-def]
        return self.runner.forward(self.pool, slot0, chunks, starts, self.sae, plan, read)

    def decode(self, ids, positions, plan, row_plans, read=()):  # type: ignore[no-untyped-def]
        return self.runner.forward(self.pool, 0, [[t] for t in ids], positions, self.sae, plan, read)


def kv_bounded_length(context: int, slots: int, position_bytes: int, max_kv_bytes: int | None) -> int:
    """The longest sequence the engine serves: the model's context, or less where `slots` sequences of
    it would hold more than `max_kv_bytes` of keys and values (SteeringError when not even one block fits)."""
    if max_kv_bytes is None:
        return context
    fits = positions_within(max_kv_bytes, slots, position_bytes)
    if fits <= 0:
        need = slots * position_bytes * BLOCK
        raise SteeringError(f"a KV bound of {max_kv_bytes / 2**20:.0f} MiB holds fewer than {BLOCK} positions for each of "
                            f"{slots} rows; give at least {-(-need // 2**20)} MiB or fewer rows", "max_kv_mib")
    return min(context, fits)


_RUNNERS: "weakref.WeakKeyDictionary[nn.Module, LlamaRunner]" = weakref.WeakKeyDictionary()
_RUNNERS_LOCK = threading.Lock()


def make_backend(
    model: nn.Module, sae: SparseAutoencoder | None, slots: int, fast: bool = True, prefix_tokens: int = 2048,
    kv_keep: int = 0, max_kv_bytes: int | None = None,
) -> Backend:
    """FastBackend (with a prefix cache of `prefix_tokens` positions, 0: none; its KV pool keeps
    `kv_keep` positions per slot when idle) where the model qualifies, else HFBackend; with
    `max_kv_bytes`, sequences are shortened so that `slots` of them fit (`kv_bounded_length`)."""
    prefix = PrefixCache(max_tokens=prefix_tokens) if prefix_tokens > 0 else None
    if fast and unsupported_reason(model) is None:
        with _RUNNERS_LOCK:
            runner = _RUNNERS.get(model)
            if runner is None or not runner.is_current(model):
                runner = _RUNNERS[model] = LlamaRunner(model)
        return FastBackend(runner, sae, slots, prefix, kv_keep, max_kv_bytes)
    reason = unbatchable_reason(model)
    if reason is not None:
        raise SteeringError(f"this server cannot batch {type(model).__name__}: {reason}", "model")
    return HFBackend(HFBatchRunner(model), sae, slots, prefix, kv_keep, max_kv_bytes)
