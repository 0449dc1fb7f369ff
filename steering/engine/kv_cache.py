"""Key/value storage for a continuously batched decoder: one slot per sequence.

For each decoder layer the pool holds

    kv   [slots, capacity, 2 * n_kv_heads, head_dim]   (keys, then values)

Slot s holds the keys and values of one sequence at its absolute positions
0..length-1 (entries past a sequence's length are stale and always masked).
New tokens are written with one `index_copy_` into the [slots * capacity]
rows of a flattened view. The scheduler keeps the decoding sequences in
slots 0..B-1, so a decode step reads `kv[:B]`, a view, without gathering; when a sequence leaves, the last
one is moved into its slot (`move`), which is the only copy.

Capacity grows by doubling (rounded to `block`) when a sequence needs more
positions, and `release` frees what lies past `keep` positions per slot when
the engine falls idle (so that the next burst does not stall every stream on
regrowing the first few hundred positions): a sequence's memory is reusable as
soon as it finishes or is cancelled, and the pool never holds more than
`slots` x max(keep, the longest running sequence) positions, i.e. at most
`slots` x `max_length` x `position_bytes`: a server bounds its KV memory by
choosing `max_length` (`positions_within`).

This module knows nothing of models, requests or HTTP.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import Tensor


BLOCK = 128  # positions: the unit capacity grows by, and the granularity of a bound


def positions_within(budget_bytes: int, slots: int, position_bytes: int, block: int = BLOCK) -> int:
    """The longest sequence (a multiple of `block`) for which `slots` sequences fit in `budget_bytes`."""
    return budget_bytes // (slots * position_bytes) // block * block


class KVPool:
    """Per-layer key/value tensors for up to `slots` sequences (see the module docstring)."""

    def __init__(
        self,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        slots: int,
        dtype: torch.dtype,
        device: torch.device,
        max_length: int,
        block: int = BLOCK,
        keep: int = 0,
        zero_fill: bool = True,
        layer_devices: Sequence[torch.device] | None = None,
    ):
        if slots <= 0:
            raise ValueError(f"slots must be positive, got {slots}")
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.slots, self.dtype, self.device = slots, dtype, device
        self.max_length, self.block = max_length, block
        # Positions per slot that `release` leaves allocated (rounded down to `block`).
        self.keep = max(0, min(keep, max_length)) // block * block
        # False: new storage is left uninitialised (for readers that never look past a row's length;
        # zeroing costs a page fault per 4 KiB at once, a stall of every running stream).
        self.zero_fill = zero_fill
        # Where each layer's K/V live: its own device when `device_map` spread the model over several.
        self.layer_devices = list(layer_devices) if layer_devices is not None else [device] * n_layers
        self.capacity = 0
        self.kv: list[Tensor] = []

    @staticmethod
    def bytes_per_position(n_layers: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        """One slot's keys and values for one position, over every layer."""
        return n_layers * 2 * n_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def reserve(self, length: int) -> None:
        """Make room for positions 0..length-1 in every slot (keeps what is stored)."""
        if length <= self.capacity:
            return
        if length > self.max_length:
            raise ValueError(f"sequence length {length} exceeds the model's context of {self.max_length}")
        cap = max(self.block, self.capacity)
        while cap < length:
            cap *= 2
        cap = min(-(-cap // self.block) * self.block, max(self.max_length, length))
        new = self._allocate(cap)
        for old, fresh in zip(self.kv, new):
            fresh[:, : self.capacity].copy_(old)
        self.kv, self.capacity = new, cap

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy slot src's first `length` positions into slot dst."""
        if src == dst or length == 0:
            return
        for t in self.kv:
            t[dst, :length].copy_(t[src, :length])

    def release(self) -> None:
        """Free the storage past `keep` positions per slot (all of it with keep 0); the pool regrows
        on the next `reserve`. What stays holds nothing: every slot is free."""
        if self.capacity > self.keep:
            self.kv, self.capacity = self._allocate(self.keep) if self.keep else [], self.keep

    def _allocate(self, capacity: int) -> list[Tensor]:
        shape = (self.slots, capacity, 2 * self.n_kv_heads, self.head_dim)
        make = torch.zeros if self.zero_fill else torch.empty
        return [make(shape, dtype=self.dtype, device=d) for d in self.layer_devices]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.kv)


class PrefixCache:
    """Keys/values of recent prompt prefixes, reused by later prompts that start the same way.

    Chat prompts share long prefixes (the system prompt, a template's
    preamble); a newcomer whose first L tokens match a cached prefix copies
    their K/V into its slot instead of recomputing them. Prefixes are cached
    at multiples of `block` tokens, under (the L token ids, `variant`), where
    `variant` is whatever else the K/V depend on (a clamp that acts on the
    prompt; None for rows whose prompt is unclamped). One stored tensor
    [n_layers, L_max, 2 * n_kv_heads, head_dim] serves all its block-aligned
    prefixes; stored tensors are evicted least recently used beyond
    `max_tokens` positions in all.

    Keys and values of position t depend only on tokens 0..t, so a reused
    prefix holds what prefilling it would compute (bit for bit where the
    matrix products are batch-invariant, as `steering.engine.llama.kernels`' are;
    else up to float rounding).
    """

    def __init__(self, block: int = 16, max_tokens: int = 2048, max_prefix: int = 1024):
        self.block, self.max_tokens, self.max_prefix = block, max_tokens, max_prefix
        self._keys: dict[tuple, tuple[tuple, int]] = {}  # key -> (store id, length)
        self._stores: "OrderedDict[tuple, tuple[Tensor, list[tuple]]]" = OrderedDict()
        self._tokens = 0

    def lookup(self, prompt: Sequence[int], variant: object) -> tuple[Tensor, int] | None:
        """(stored K/V, L) for the longest cached block-aligned prefix (shorter than the prompt), or None."""
        longest = min(len(prompt) - 1, self.max_prefix) // self.block * self.block
        for length in range(longest, 0, -self.block):
            hit = self._keys.get((tuple(prompt[:length]), variant))
            if hit is not None:
                store_id, _ = hit
                self._stores.move_to_end(store_id)
                return self._stores[store_id][0], length
        return None

    def wants(self, prompt: Sequence[int], variant: object) -> int:
        """The prefix length worth storing for this prompt (0 if none or already stored)."""
        length = min(len(prompt) - 1, self.max_prefix) // self.block * self.block
        if length == 0 or (tuple(prompt[:length]), variant) in self._keys:
            return 0
        return length

    def store(self, prompt: Sequence[int], variant: object, kv: Tensor) -> None:
        """Keep kv [n_layers, L, 2 * n_kv_heads, head_dim] as the K/V of prompt[:L]."""
        length = kv.shape[1]
        if length > self.max_tokens:
            return
        store_id = (tuple(prompt[:length]), variant)
        keys = [(tuple(prompt[:n]), variant) for n in range(self.block, length + 1, self.block)]
        for key in keys:
            self._keys[key] = (store_id, len(key[0]))
        self._stores[store_id] = (kv, keys)
        self._tokens += length
        while self._tokens > self.max_tokens:
            old_id, (old_kv, old_keys) = self._stores.popitem(last=False)
            self._tokens -= old_kv.shape[1]
            for key in old_keys:
                if self._keys.get(key, (None,))[0] == old_id:
                    del self._keys[key]

    def clear(self) -> None:
        self._keys.clear()
        self._stores.clear()
        self._tokens = 0

    def __len__(self) -> int:
        return len(self._stores)
