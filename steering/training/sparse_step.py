"""One BatchTopK training step with a hand-written sparse backward (CPU-friendly).

Shapes: x [N, d] (already scaled by c so that E||x||^2 = d), S = d_sae,
W_enc_T [S, d] (the encoder stored transposed, rows gathered by feature),
b_enc [S], W_dec [S, d] (unit-norm rows), b_dec [d].

Forward:
    h     = x - b_dec                                   [N, d]
    pre   = h @ W_enc_T.T + b_enc                       [N, S]   the one dense matmul
    (r,c) = the N*k largest entries of relu(pre) over the whole batch (BatchTopK)
    v     = pre[r, c]                                   [M]      M <= N*k
    x_hat = b_dec + sum_{(r,c)} v * W_dec[c]            [N, d]
    loss  = ||x_hat - x||^2 summed over d, averaged over N, divided by d
AuxK (Gao et al. 2024): the aux_k largest pre-activations among dead features
reconstruct the residual e = x - x_hat (held constant); weight `aux_coef`.

Backward, touching only the M selected (row, feature) pairs: with
g = dloss/dx_hat [N, d] and gv = dloss/dv [M],
    gv        = g[r] . W_dec[c]                     (sampled dense-dense product)
    dW_dec[c] += v * g[r];   dW_enc_T[c] += gv * h[r];   db_enc[c] += gv
    dh[r]     += gv * W_enc_T[c];   db_dec = sum_r g - sum_r dh
Autograd through the dense decoder and encoder would cost three dense
[N, S] x [S, d] matmuls; this costs one, plus O(M * d) sparse work.
Matryoshka (`prefixes` m_1 < ... < m_G, with m_G = S appended): nested
dictionaries, each prefix of the features trained to reconstruct alone
(Bussmann et al. 2025, "Learning multi-level features with Matryoshka SAEs"),
which moves broad concepts into the first features. With x_hat_j the
reconstruction from the selected features of index < m_j (the same BatchTopK
selection for every j),
    loss  = mean over j of ||x_hat_j - x||^2 / d, averaged over N
and a feature of group q (m_{q-1} <= c < m_q) appears in every x_hat_j with
j >= q, so its g is the suffix sum G_q = sum_{j >= q} dloss/dx_hat_j in the
formulas above. AuxK reconstructs the whole dictionary's residual.
Selection uses a running threshold estimate: entries above 0.8 x the last
batch's k-th value are the candidates, and an exact top-N*k among them (falling
back to a full sort when there are too few).

This module does not know about data, optimisers or files.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F


@dataclass
class Selection:
    """Sparse (row, feature, value) triples sorted by row, plus bag offsets [N]."""

    rows: Tensor
    cols: Tensor
    vals: Tensor
    offsets: Tensor
    n_rows: int


def _make_selection(rows: Tensor, cols: Tensor, vals: Tensor, n_rows: int, n_cols: int) -> Selection:
    order = torch.argsort(rows * n_cols + cols)
    rows, cols, vals = rows[order], cols[order], vals[order]
    offsets = torch.searchsorted(rows, torch.arange(n_rows, dtype=rows.dtype))
    return Selection(rows, cols, vals, offsets, n_rows)


def _columns_in(sel: Selection, lo: int, hi: int) -> Selection:
    """The part of a selection with lo <= feature < hi (still sorted by row)."""
    keep = (sel.cols >= lo) & (sel.cols < hi)
    rows = sel.rows[keep]
    offsets = torch.searchsorted(rows, torch.arange(sel.n_rows, dtype=rows.dtype))
    return Selection(rows, sel.cols[keep], sel.vals[keep], offsets, sel.n_rows)


def prefix_bounds(prefixes: Sequence[int], n_features: int) -> list[int]:
    """The Matryoshka prefix sizes, checked, with the whole dictionary last: [m_1, ..., n_features]."""
    bounds = [int(m) for m in prefixes]
    if any(b <= a for a, b in zip([0, *bounds], bounds)) or (bounds and bounds[-1] > n_features):
        raise ValueError(f"Matryoshka prefixes must increase within (0, {n_features}], got {list(prefixes)}")
    return bounds if bounds and bounds[-1] == n_features else [*bounds, n_features]


def batch_topk(pre: Tensor, k_total: int, threshold_hint: float | None = None) -> tuple[Selection, float]:
    """The k_total largest positive entries of pre [N, S]; returns them and the k-th value."""
    n, s = pre.shape
    flat = pre.reshape(-1)
    cand = None
    if threshold_hint is not None and threshold_hint > 0:
        cand = torch.nonzero(flat > 0.8 * threshold_hint).squeeze(1)
        if cand.numel() < k_total:
            cand = None
    if cand is None:
        vals, idx = flat.topk(min(k_total, flat.numel()))
    else:
        vals, j = flat[cand].topk(k_total)
        idx = cand[j]
    keep = vals > 0
    vals, idx = vals[keep], idx[keep]
    kth = float(vals[-1]) if vals.numel() else 0.0
    return _make_selection(idx // s, idx % s, vals, n, s), kth


def row_topk(pre: Tensor, k: int, n_features: int, columns: Tensor | None = None) -> Selection:
    """Per-row top-k positive entries of pre [N, m]; columns [m] maps to feature ids."""
    n, m = pre.shape
    vals, j = pre.topk(min(k, m), dim=-1)
    rows = torch.arange(n).unsqueeze(1).expand_as(j)
    keep = vals > 0
    cols = j if columns is None else columns[j]
    return _make_selection(rows[keep], cols[keep], vals[keep], n, n_features)


def decode(sel: Selection, W_dec: Tensor, vals: Tensor | None = None) -> Tensor:
    """sum over the selection of vals * W_dec[col], per row -> [N, d] (no bias)."""
    weights = sel.vals if vals is None else vals
    return F.embedding_bag(sel.cols, W_dec, sel.offsets, mode="sum", per_sample_weights=weights)


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """A CSR tensor built from indices that are valid by construction (torch's beta warning silenced)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def _transpose_csr(rows: Tensor, cols: Tensor, vals: Tensor, n_rows: int, n_cols: int) -> Tensor:
    """CSR [n_cols, n_rows] of the triples, for feature-major sums sum_r vals * X[r]."""
    order = torch.argsort(cols * n_rows + rows)
    c, r, v = cols[order], rows[order], vals[order]
    crow = torch.zeros(n_cols + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(c, minlength=n_cols), 0)
    return _csr(crow, r, v, (n_cols, n_rows))


def feature_sums(sel: Selection, vals: Tensor, X: Tensor, n_features: int) -> Tensor:
    """out[c] = sum over the selection's (r, c) of vals * X[r]  -> [n_features, d]."""
    csr = _transpose_csr(sel.rows, sel.cols, vals, sel.n_rows, n_features)
    return torch.sparse.mm(csr, X[: sel.n_rows])


def sampled_dots(sel: Selection, G: Tensor, W: Tensor) -> Tensor:
    """G[r] . W[c] for each selected (r, c) -> [M]."""
    if sel.vals.numel() == 0:
        return sel.vals.clone()
    crow = torch.zeros(sel.n_rows + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(sel.rows, minlength=sel.n_rows), 0)
    pattern = _csr(crow, sel.cols, torch.zeros_like(sel.vals), (sel.n_rows, W.shape[0]))
    return torch.sparse.sampled_addmm(pattern, G[: sel.n_rows], W.T).values()


@dataclass
class StepResult:
    loss: float
    mse: float
    aux: float
    fvu: float
    l0: float
    kth: float
    fired: Tensor  # bool [S]: features active in this batch


def sae_step(
    x: Tensor,
    W_enc_T: Tensor,
    b_enc: Tensor,
    W_dec: Tensor,
    b_dec: Tensor,
    *,
    k: int,
    dead: Tensor | None = None,
    aux_k: int = 256,
    aux_coef: float = 1 / 32,
    aux_rows: int = 512,
    threshold_hint: float | None = None,
    prefixes: Sequence[int] = (),
) -> StepResult:
    """Forward + sparse backward on x [N, d]; writes .grad of the four parameters. `prefixes`: Matryoshka
    prefix sizes (module docstring; empty: one dictionary)."""
    n, d = x.shape
    S = W_dec.shape[0]
    bounds = prefix_bounds(prefixes, S)
    with torch.no_grad():
        h = x - b_dec
        pre = torch.addmm(b_enc, h, W_enc_T.T)
        sel, kth = batch_topk(pre, n * k, threshold_hint)
        groups = [sel] if len(bounds) == 1 else [_columns_in(sel, lo, hi) for lo, hi in zip([0, *bounds], bounds)]
        x_hat = b_dec.expand(n, d)
        grads_out = []  # dloss/dx_hat_j, one per prefix
        mse = torch.zeros(())
        for part in groups:
            x_hat = x_hat + decode(part, W_dec)
            err = x_hat - x  # the last one is the whole dictionary's error
            mse = mse + err.pow(2).sum() / (n * d * len(groups))
            grads_out.append(err * (2.0 / (n * d * len(groups))))
        grad_b_dec = grads_out[0].sum(0)
        for g_j in grads_out[1:]:
            grad_b_dec += g_j.sum(0)
        grad_W_dec = torch.zeros_like(W_dec)
        enc_sels, enc_grads = [], []
        g = torch.zeros_like(x)
        for part, g_j in zip(reversed(groups), reversed(grads_out)):
            g = g + g_j  # G_q: the suffix sum over the prefixes that hold this group
            grad_W_dec += feature_sums(part, part.vals, g, S)
            enc_sels.append(part)
            enc_grads.append(sampled_dots(part, g, W_dec))

        aux = torch.zeros(())
        if dead is not None and aux_coef > 0 and bool(dead.any()):
            dead_idx = torch.nonzero(dead).squeeze(1)
            m = min(aux_rows, n)
            aux_sel = row_topk(pre[:m, dead_idx], aux_k, S, dead_idx)
            if aux_sel.vals.numel():
                e_hat = decode(aux_sel, W_dec)
                aux_err = e_hat + err[:m]  # e_hat - (x - x_hat)
                aux = aux_coef * aux_err.pow(2).sum() / (m * d)
                g_aux = aux_err * (2.0 * aux_coef / (m * d))
                grad_W_dec += feature_sums(aux_sel, aux_sel.vals, g_aux, S)
                enc_sels.append(aux_sel)
                enc_grads.append(sampled_dots(aux_sel, g_aux, W_dec))

        grad_W_enc_T = torch.zeros_like(W_enc_T)
        grad_b_enc = torch.zeros_like(b_enc)
        grad_h = torch.zeros_like(h)
        for s_, gv_ in zip(enc_sels, enc_grads):
            grad_W_enc_T += feature_sums(s_, gv_, h, S)
            grad_b_enc.index_add_(0, s_.cols, gv_)
            grad_h[: s_.n_rows] += decode(s_, W_enc_T, gv_)
        grad_b_dec -= grad_h.sum(0)

        # Unit-norm decoder rows: drop the gradient component along each row.
        grad_W_dec -= (grad_W_dec * W_dec).sum(-1, keepdim=True) * W_dec
        for p, gr in ((W_enc_T, grad_W_enc_T), (b_enc, grad_b_enc), (W_dec, grad_W_dec), (b_dec, grad_b_dec)):
            p.grad = gr

        total_var = (x - x.mean(0)).pow(2).sum()
        fired = torch.zeros(S, dtype=torch.bool)
        fired[sel.cols] = True
        return StepResult(
            loss=float(mse + aux),
            mse=float(mse),
            aux=float(aux),
            fvu=float(err.pow(2).sum() / total_var),
            l0=sel.vals.numel() / n,
            kth=kth,
            fired=fired,
        )
