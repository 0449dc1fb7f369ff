"""Activations on disk: chunked float16 .npy files, read back memory-mapped and shuffled.

Layout of an activation folder:

    chunk_00000.npy      float16 [n_i, d_model]  activations
    chunk_00000.idx.npy  int32   [n_i, 2]        (corpus row, position) of each
    progress.json        rows of the corpus done, chunks written (for resuming)
    meta.json            written when the folder is complete

Chunks end at batch boundaries, so a harvest that stops can resume after the
last chunk written. Reading: `ActivationStore` maps every chunk and serves
batches from one seeded permutation of all rows per epoch (shuffled across
chunks; batch b of epoch e is a pure function of (seed, e, b), which makes
training resumable). The OS page cache keeps hot chunks in memory; a batch's
rows are sorted before the gather so each chunk is read in order.

This module knows nothing about models or SAEs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch


class ActivationWriter:
    """Buffers activations and writes a chunk whenever `chunk_tokens` rows are pending."""

    def __init__(self, out_dir: str | Path, d_model: int, chunk_tokens: int = 65_536):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.d_model = d_model
        self.chunk_tokens = chunk_tokens
        self.progress = read_progress(self.dir)
        self._acts: list[np.ndarray] = []
        self._idx: list[np.ndarray] = []
        self._pending = 0
        self._rows_pending = self.rows_done

    @property
    def rows_done(self) -> int:
        return int(self.progress["rows_done"])

    @property
    def tokens_written(self) -> int:
        return int(sum(self.progress["chunk_sizes"]))

    def append(self, acts: np.ndarray, index: np.ndarray, rows_done: int) -> None:
        """Add acts [n, d_model] with their (row, position) index [n, 2]; rows_done counts corpus rows consumed."""
        if acts.ndim != 2 or acts.shape[1] != self.d_model or index.shape != (acts.shape[0], 2):
            raise ValueError(f"expected acts [n, {self.d_model}] and index [n, 2], got {acts.shape} and {index.shape}")
        self._acts.append(acts.astype(np.float16, copy=False))
        self._idx.append(index.astype(np.int32, copy=False))
        self._pending += acts.shape[0]
        self._rows_pending = rows_done
        if self._pending >= self.chunk_tokens:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        i = len(self.progress["chunk_sizes"])
        name = f"chunk_{i:05d}"
        np.save(self.dir / f"{name}.npy", np.concatenate(self._acts))
        np.save(self.dir / f"{name}.idx.npy", np.concatenate(self._idx))
        self.progress["chunk_sizes"].append(self._pending)
        self.progress["rows_done"] = self._rows_pending
        (self.dir / "progress.json").write_text(json.dumps(self.progress))
        self._acts, self._idx, self._pending = [], [], 0

    def finish(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Flush and write meta.json (adds d_model, n_tokens, chunk sizes)."""
        self.flush()
        meta = {**meta, "d_model": self.d_model, "n_tokens": self.tokens_written,
                "chunk_sizes": self.progress["chunk_sizes"], "rows_done": self.rows_done, "complete": True}
        (self.dir / "meta.json").write_text(json.dumps(meta, indent=2))
        return meta


def read_progress(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "progress.json"
    if path.exists():
        return json.loads(path.read_text())
    return {"rows_done": 0, "chunk_sizes": []}


class ActivationStore:
    """All chunks of a folder as one [n_tokens, d_model] array (memory-mapped)."""

    def __init__(self, folder: str | Path, max_tokens: int | None = None):
        self.dir = Path(folder)
        progress = read_progress(self.dir)
        sizes = list(progress["chunk_sizes"])
        if not sizes:
            raise FileNotFoundError(f"no activation chunks in {self.dir}: run `python -m steering harvest` first")
        self.acts = [np.load(self.dir / f"chunk_{i:05d}.npy", mmap_mode="r") for i in range(len(sizes))]
        self.index = [np.load(self.dir / f"chunk_{i:05d}.idx.npy", mmap_mode="r") for i in range(len(sizes))]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        total = int(self.offsets[-1])
        self.n_tokens = total if max_tokens is None else min(total, int(max_tokens))
        self.d_model = int(self.acts[0].shape[1])
        meta_path = self.dir / "meta.json"
        self.meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}

    def __len__(self) -> int:
        return self.n_tokens

    def _gather(self, arrays: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        chunk = np.searchsorted(self.offsets, sorted_rows, side="right") - 1
        out = np.empty((len(rows), *arrays[0].shape[1:]), dtype=arrays[0].dtype)
        bounds = np.flatnonzero(np.diff(chunk)) + 1
        for lo, hi in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(rows)]])):
            c = int(chunk[lo])
            out[order[lo:hi]] = arrays[c][sorted_rows[lo:hi] - self.offsets[c]]
        return out

    def get(self, rows: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Activations of global rows [n] -> [n, d_model]."""
        return torch.from_numpy(self._gather(self.acts, rows)).to(dtype)

    def positions(self, rows: np.ndarray) -> np.ndarray:
        """(corpus row, position) of global rows [n] -> int32 [n, 2]."""
        return self._gather(self.index, rows)

    def slices(self, batch_size: int, dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
        """Every row once, in order (for evaluation)."""
        for start in range(0, self.n_tokens, batch_size):
            yield self.get(np.arange(start, min(start + batch_size, self.n_tokens)), dtype)

    def permutation(self, seed: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch]).permutation(self.n_tokens)

    def random_batch(self, batch_size: int, seed: int, step: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows drawn uniformly with replacement, seeded by (seed, step): for a store that is still growing."""
        rows = np.random.default_rng([seed, step, 1]).integers(0, self.n_tokens, size=batch_size)
        return self.get(rows, dtype)

    def batches(self, batch_size: int, seed: int, start_step: int = 0,
                dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
        """Endless shuffled batches [batch_size, d_model]; step s of the stream is a function of (seed, s)."""
        per_epoch = self.n_tokens // batch_size
        if per_epoch == 0:
            raise ValueError(f"batch_size {batch_size} exceeds the {self.n_tokens} stored tokens")
        step = start_step
        while True:
            epoch, b = divmod(step, per_epoch)
            perm = self.permutation(seed, epoch)
            for b in range(b, per_epoch):
                yield self.get(perm[b * batch_size : (b + 1) * batch_size], dtype)
                step += 1
