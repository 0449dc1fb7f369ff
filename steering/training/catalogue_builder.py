"""Build the feature catalogue of an SAE (format: see `steering.sae.catalogue`).

From held-out activations (an `ActivationStore` with the (row, position)
index of each token) and the corpus rows they came from:

    * statistics: max activation and firing frequency per feature;
    * top contexts: all (token, feature, value) triples with f > 0 are kept
      (~L0 per token), sorted per feature by value; at most one context per
      corpus row, the best `n_contexts`; the window is `before` tokens, the
      peak token, `after` tokens;
    * logit effects: W_dec[i] @ (W_U * g).T, the top 10 and bottom 10 tokens
      (W_U the unembedding [V, d], g the final norm's weight when it has one);
    * neighbours: the 10 other features of highest decoder cosine;
    * labels: what the top contexts share (`steering.training.labels`): words
      distinctive against all contexts, e.g. "dogs, puppy · at 'the'" (kind
      concept), else the peak token ('token "of"'), else "unclear".

Dense [S, V] and [S, S] products are computed in blocks of features, so memory
stays near block x V floats.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save_file
from torch import Tensor
from tqdm.auto import tqdm

from steering.sae.autoencoder import SparseAutoencoder
from steering.sae.catalogue import CATALOGUE_ARRAYS, CATALOGUE_JSON, FORMAT, Catalogue
from steering.tokens import vocabulary_bytes
from steering.training.extension import new_features_only
from steering.training.labels import KINDS, make_labels
from steering.training.store import ActivationStore


def unembedding(model: torch.nn.Module) -> Tensor:
    """W_U * g [V, d]: the output embedding with the final norm's weight folded in."""
    W_U = model.get_output_embeddings().weight.detach().float()
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    norm = getattr(base, "norm", None) or getattr(base, "ln_f", None)
    g = getattr(norm, "weight", None)
    return W_U * g.detach().float() if g is not None else W_U


def feature_activations(sae: SparseAutoencoder, store: ActivationStore, batch_size: int = 2048, progress: bool = True):
    """All (global token, feature, value) triples with f > 0, plus max and firing frequency [S]."""
    S = sae.d_sae
    rows, cols, vals = [], [], []
    fires = torch.zeros(S, dtype=torch.float64)
    max_act = torch.zeros(S)
    starts = range(0, len(store), batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc="catalogue: encode", disable=not progress):
            f = sae.encode(store.get(np.arange(start, min(start + batch_size, len(store)))))
            r, c = torch.nonzero(f > 0, as_tuple=True)
            v = f[r, c]
            rows.append((r + start).numpy())
            cols.append(c.numpy())
            vals.append(v.float().numpy())
            fires += torch.bincount(c, minlength=S).double()
            max_act = torch.maximum(max_act, f.float().amax(0).clamp_min(0))
    return (np.concatenate(rows), np.concatenate(cols), np.concatenate(vals),
            max_act, (fires / max(len(store), 1)).float())


def top_contexts(store: ActivationStore, corpus_rows: np.ndarray, triples: tuple[np.ndarray, np.ndarray, np.ndarray],
                 d_sae: int, n_contexts: int, before: int, after: int) -> tuple[np.ndarray, np.ndarray]:
    """Token windows [S, C, W] (int64, -1 pad) and peak values [S, C] of each feature's best contexts."""
    tok, feat, val = triples
    order = np.lexsort((-val, feat))
    tok, feat, val = tok[order], feat[order], val[order]
    pos = store.positions(tok).astype(np.int64)  # (corpus row, position)
    bounds = np.searchsorted(feat, np.arange(d_sae + 1))
    W = before + 1 + after
    windows = np.full((d_sae, n_contexts, W), -1, dtype=np.int64)
    acts = np.zeros((d_sae, n_contexts), dtype=np.float32)
    n_rows, T = corpus_rows.shape
    for j in range(d_sae):
        lo, hi = bounds[j], bounds[j + 1]
        if lo == hi:
            continue
        _, first = np.unique(pos[lo:hi, 0], return_index=True)  # best context of each corpus row
        best = np.sort(first)[:n_contexts] + lo
        for c, i in enumerate(best):
            row, p = pos[i]
            a, b = max(0, p - before), min(T, p + after + 1)
            windows[j, c, before - (p - a) : before + (b - p)] = corpus_rows[row, a:b]
            acts[j, c] = val[i]
    return windows, acts


def _stored_windows(windows: np.ndarray, dtype: Any) -> np.ndarray:
    """Token windows (int64, -1 pad) as the catalogue stores them: uint16 with its largest value as the pad
    (vocabularies under 65,535 ids), else int32 with -1."""
    if np.dtype(dtype) == np.uint16:
        return np.where(windows < 0, np.iinfo(np.uint16).max, windows).astype(np.uint16)
    return windows.astype(np.int32)


def logit_effects(W_dec: Tensor, W_U: Tensor, n: int = 10, block: int = 1024) -> tuple[Tensor, ...]:
    """Top and bottom n tokens of W_dec @ W_U.T per feature: (top_ids, top_vals, bottom_ids, bottom_vals)."""
    outs: list[list[Tensor]] = [[], [], [], []]
    for s in range(0, W_dec.shape[0], block):
        logits = W_dec[s : s + block].float() @ W_U.T
        top, bottom = logits.topk(n, dim=-1), logits.topk(n, dim=-1, largest=False)
        for lst, t in zip(outs, (top.indices, top.values, bottom.indices, bottom.values)):
            lst.append(t)
    return tuple(torch.cat(lst) for lst in outs)


def neighbours(W_dec: Tensor, n: int = 10, block: int = 1024) -> tuple[Tensor, Tensor]:
    """The n features of highest decoder cosine for each feature (itself excluded): ids, cosines."""
    unit = W_dec.float() / W_dec.float().norm(dim=-1, keepdim=True).clamp_min(1e-8)
    ids, cos = [], []
    for s in range(0, unit.shape[0], block):
        sim = unit[s : s + block] @ unit.T
        sim[torch.arange(sim.shape[0]), torch.arange(s, s + sim.shape[0])] = -2.0
        top = sim.topk(min(n, unit.shape[0] - 1), dim=-1)
        ids.append(top.indices)
        cos.append(top.values)
    return torch.cat(ids), torch.cat(cos)


def build_catalogue(
    sae: SparseAutoencoder,
    store: ActivationStore,
    corpus_rows: np.ndarray,
    tokenizer: Any,
    W_U: Tensor,
    out_dir: str | Path,
    *,
    n_contexts: int = 20,
    before: int = 12,
    after: int = 3,
    n_logits: int = 10,
    n_neighbours: int = 10,
    source: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Write catalogue.json + catalogue.safetensors to out_dir; sets the SAE's feature stats."""
    S = sae.d_sae
    tok, feat, val, max_act, freq = feature_activations(sae, store, progress=progress)
    sae.set_feature_stats(max_activation=max_act, firing_frequency=freq)
    windows, acts = top_contexts(store, corpus_rows, (tok, feat, val), S, n_contexts, before, after)
    W_dec = sae.W_dec.detach().float()
    top_i, top_v, bot_i, bot_v = logit_effects(W_dec, W_U.float(), n_logits)
    nb_i, nb_c = neighbours(W_dec, n_neighbours)
    vocab = vocabulary_bytes(tokenizer)
    text = [b.decode("utf-8", errors="replace") for b in vocab]
    labels = make_labels(windows, acts, top_i.numpy(), nb_i.numpy(), text, before)
    ctx = _stored_windows(windows, np.uint16 if len(vocab) < np.iinfo(np.uint16).max else np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in vocab])]).astype(np.int64)
    arrays = {
        "max_activation": max_act.numpy().astype(np.float32),
        "firing_frequency": freq.numpy().astype(np.float32),
        "context_tokens": ctx,
        "context_activation": acts.astype(np.float16),
        "promoted_ids": top_i.numpy().astype(np.int32),
        "promoted_values": top_v.numpy().astype(np.float16),
        "suppressed_ids": bot_i.numpy().astype(np.int32),
        "suppressed_values": bot_v.numpy().astype(np.float16),
        "neighbour_ids": nb_i.numpy().astype(np.int32),
        "neighbour_cosine": nb_c.numpy().astype(np.float16),
        "vocab_bytes": np.frombuffer(b"".join(vocab), dtype=np.uint8).copy(),
        "vocab_offsets": offsets,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(arrays, str(out / CATALOGUE_ARRAYS))
    meta = {"format": FORMAT, "version": 1, "d_sae": S, "n_contexts": n_contexts, "window": [before, after],
            "n_tokens": len(store), "source": source, "labels": [lab.text for lab in labels],
            "label_kinds": [lab.kind for lab in labels]}
    (out / CATALOGUE_JSON).write_text(json.dumps(meta, ensure_ascii=False))
    return {k: v for k, v in meta.items() if k not in ("labels", "label_kinds")}


def relabel(folder: str | Path) -> dict[str, Any]:
    """Recompute the labels of the catalogue stored in `folder` from its own arrays (no model, no activations)
    and rewrite its catalogue.json; returns how many features got each kind."""
    catalogue = Catalogue.load(folder)
    a = catalogue.arrays
    texts = [catalogue.token(t) for t in range(len(a["vocab_offsets"]) - 1)]
    labels = make_labels(a["context_tokens"], a["context_activation"], a["promoted_ids"], a["neighbour_ids"], texts,
                         catalogue.before)
    meta = {**catalogue.meta, "labels": [lab.text for lab in labels], "label_kinds": [lab.kind for lab in labels]}
    (Path(folder) / CATALOGUE_JSON).write_text(json.dumps(meta, ensure_ascii=False))
    return {kind: sum(lab.kind == kind for lab in labels) for kind in KINDS}


def extend_catalogue(folder: str | Path, grown: SparseAutoencoder, start: int,
                     held_out: list[tuple[ActivationStore, np.ndarray]], tokenizer: Any, W_U: Tensor,
                     *, progress: bool = True) -> dict[str, Any]:
    """Append the features start.. of a grown SAE (`steering.training.extension`) to the catalogue in `folder`.

    The new features' contexts, maximum and firing frequency come from each (held-out store, its corpus rows)
    pair, merged: the best contexts over all stores, the largest maximum, firing counted over all their
    tokens. The old features keep their contexts and statistics; promoted tokens are computed for the new
    rows; neighbours and labels are recomputed for every feature (a new feature may be an old one's nearest).
    Sets the new features' statistics on `grown`; returns counts.
    """
    old = Catalogue.load(folder)
    if old.meta["d_sae"] != start:
        raise ValueError(f"the catalogue in {folder} has {old.meta['d_sae']} features; the extension starts at {start}")
    part = new_features_only(grown, start)
    N = part.d_sae
    C = int(old.meta["n_contexts"])
    before, after = (int(v) for v in old.meta["window"])
    windows, acts, maxes, fires, n_tokens = [], [], [], torch.zeros(N, dtype=torch.float64), 0
    for store, rows in held_out:
        tok, feat, val, max_act, freq = feature_activations(part, store, progress=progress)
        w, a = top_contexts(store, rows, (tok, feat, val), N, C, before, after)
        windows.append(w)
        acts.append(a)
        maxes.append(max_act)
        fires += freq.double() * len(store)
        n_tokens += len(store)
    all_w, all_a = np.concatenate(windows, axis=1), np.concatenate(acts, axis=1)
    best = np.argsort(-all_a, axis=1, kind="stable")[:, :C]
    new_w = np.take_along_axis(all_w, best[:, :, None], axis=1)
    new_a = np.take_along_axis(all_a, best, axis=1)
    max_act = torch.stack(maxes).amax(0)
    freq = (fires / max(n_tokens, 1)).float()
    with torch.no_grad():
        grown.max_activation[start:] = max_act
        grown.firing_frequency[start:] = freq
    W_dec = grown.W_dec.detach().float()
    top_i, top_v, bot_i, bot_v = logit_effects(W_dec[start:], W_U.float(), old.arrays["promoted_ids"].shape[1])
    nb_i, nb_c = neighbours(W_dec, old.arrays["neighbour_ids"].shape[1])
    a = old.arrays
    new_ctx = _stored_windows(new_w, a["context_tokens"].dtype)
    arrays = dict(a)
    arrays.update({
        "max_activation": np.concatenate([a["max_activation"], max_act.numpy().astype(np.float32)]),
        "firing_frequency": np.concatenate([a["firing_frequency"], freq.numpy().astype(np.float32)]),
        "context_tokens": np.concatenate([a["context_tokens"], new_ctx]),
        "context_activation": np.concatenate([a["context_activation"], new_a.astype(np.float16)]),
        "promoted_ids": np.concatenate([a["promoted_ids"], top_i.numpy().astype(np.int32)]),
        "promoted_values": np.concatenate([a["promoted_values"], top_v.numpy().astype(np.float16)]),
        "suppressed_ids": np.concatenate([a["suppressed_ids"], bot_i.numpy().astype(np.int32)]),
        "suppressed_values": np.concatenate([a["suppressed_values"], bot_v.numpy().astype(np.float16)]),
        "neighbour_ids": nb_i.numpy().astype(np.int32),
        "neighbour_cosine": nb_c.numpy().astype(np.float16),
    })
    texts = [old.token(t) for t in range(len(a["vocab_offsets"]) - 1)]
    labels = make_labels(arrays["context_tokens"], arrays["context_activation"], arrays["promoted_ids"],
                         arrays["neighbour_ids"], texts, before)
    old_labels = old.meta["labels"]
    changed = sum(lab.text != prev for lab, prev in zip(labels[:start], old_labels))
    save_file(arrays, str(Path(folder) / CATALOGUE_ARRAYS))
    meta = {**old.meta, "d_sae": grown.d_sae, "labels": [lab.text for lab in labels],
            "label_kinds": [lab.kind for lab in labels],
            "extension": {"start": start, "n_features": N, "held_out_tokens": n_tokens}}
    (Path(folder) / CATALOGUE_JSON).write_text(json.dumps(meta, ensure_ascii=False))
    return {"features": grown.d_sae, "new": N, "old_labels_changed": changed, "held_out_tokens": n_tokens,
            "new_kinds": {kind: sum(lab.kind == kind for lab in labels[start:]) for kind in KINDS}}
