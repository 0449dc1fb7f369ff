"""Training pieces on small tensors: metrics by hand, the sparse step against autograd, the store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steering.sae.autoencoder import SAEConfig, SparseAutoencoder
from steering.training.corpus import Document, is_held_out, pack
from steering.training.evaluate import ActivationMetrics, next_token_ce, splice
from steering.training.harvest import keep_mask
from steering.training.sparse_step import batch_topk, sae_step
from steering.training.store import ActivationStore, ActivationWriter
from steering.training.train import geometric_median, lr_factor


def test_activation_metrics_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 2.0]])
    x_hat = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    f = torch.tensor([[1.0, 0.0, 0.0, 2.0], [0.5, 0.0, 0.0, 0.0], [3.0, 0.0, 1.0, 0.0]])
    acc = ActivationMetrics(d_sae=4, dense_threshold=0.5)
    acc.update(x[:2], f[:2], x_hat[:2])  # two batches give the same as one
    acc.update(x[2:], f[2:], x_hat[2:])
    r = acc.result()
    assert r["l0"] == pytest.approx((2 + 1 + 2) / 3)
    # errors: 0 + 1 + 1 = 2; mean (4/3, 4/3); total variance = sum ||x - mean||^2
    total_var = ((x - x.mean(0)) ** 2).sum().item()
    assert r["variance_explained"] == pytest.approx(1 - 2 / total_var)
    # firing frequencies: [1, 0, 1/3, 1/3] -> 1 dead of 4; dense (> 0.5): 1 of 4
    assert r["dead_fraction"] == pytest.approx(0.25)
    assert r["dense_fraction"] == pytest.approx(0.25)
    assert torch.allclose(acc.max_act, torch.tensor([3.0, 0.0, 1.0, 2.0]))
    assert r["d_sae"] == 4 and r["tokens"] == 3


def test_next_token_ce_by_hand():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 1] = 2.0
    tokens = torch.tensor([[0, 1, 3]])
    total, n = next_token_ce(logits, tokens)
    expected = -(2 - np.log(np.exp(2) + 3)) + np.log(4)  # predict 1 from pos 0, 3 from pos 1 (uniform)
    assert n == 2
    assert total == pytest.approx(expected, rel=1e-6)


def test_keep_mask_drops_position_zero_and_outliers():
    hidden = torch.ones(2, 6, 4)
    hidden[0, 3] *= 100.0  # an outlier norm
    keep = keep_mask(hidden, outlier_factor=10.0)
    assert keep.tolist() == [[False, True, True, False, True, True], [False, True, True, True, True, True]]


def _small_sae(seed: int = 0) -> SparseAutoencoder:
    cfg = SAEConfig(d_in=8, d_sae=24, architecture="batchtopk", k=3,
                    normalize_activations="expected_average_only_in", norm_scaling_factor=0.5)
    sae = SparseAutoencoder.random(cfg, seed=seed)
    with torch.no_grad():
        sae.threshold.fill_(0.2)
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(1))
    return sae


def test_splice_with_error_term_is_identity_and_keeps_excluded_positions():
    sae = _small_sae()
    hidden = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sae = sae.double()
    keep = keep_mask(hidden)
    assert torch.allclose(splice(sae, hidden, keep, error=True), hidden, atol=1e-12)
    spliced = splice(sae, hidden, keep)
    assert torch.equal(spliced[:, 0], hidden[:, 0])
    assert torch.allclose(spliced[keep], sae(hidden)[keep])
    mean = torch.zeros(8, dtype=torch.float64)
    assert torch.equal(splice(sae, hidden, keep, mean=mean)[keep], torch.zeros_like(hidden[keep]))


def _autograd_reference(x, params, k, dead, aux_k, aux_rows, aux_coef=1 / 32, prefixes=()):
    We, be, Wd, bd = [p.clone().requires_grad_(True) for p in params]
    n, d = x.shape
    S = Wd.shape[0]
    pre = (x - bd) @ We.T + be
    flat = pre.detach().flatten()
    v, idx = flat.topk(n * k)
    mask = torch.zeros(n * S, dtype=torch.bool)
    mask[idx[v > 0]] = True
    f = torch.where(mask.view(n, S), pre, torch.zeros_like(pre))
    x_hat = f @ Wd + bd
    bounds = [*prefixes, S]  # Matryoshka: each prefix of the dictionary reconstructs alone
    loss = sum((f[:, :m] @ Wd[:m] + bd - x).pow(2).sum() for m in bounds) / (n * d * len(bounds))
    pd = pre[:aux_rows][:, dead]
    vv, jj = pd.detach().topk(aux_k, dim=-1)
    am = torch.zeros_like(pd, dtype=torch.bool).scatter_(1, jj, vv > 0)
    e_hat = torch.where(am, pd, torch.zeros_like(pd)) @ Wd[dead]
    loss = loss + aux_coef * (e_hat - (x[:aux_rows] - x_hat[:aux_rows].detach())).pow(2).sum() / (aux_rows * d)
    loss.backward()
    g_dec = Wd.grad - (Wd.grad * Wd).sum(-1, keepdim=True) * Wd  # unit-norm rows: parallel part removed
    return float(loss.detach()), [We.grad, be.grad, g_dec, bd.grad]


def _random_step_inputs(seed: int, n: int, S: int, d: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """x [n, d] and the four parameters (W_enc_T near W_dec, unit-norm W_dec rows, small biases)."""
    gen = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(n, d, generator=gen)
    W_dec = torch.randn(S, d, generator=gen)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    return x, [W_dec + 0.1 * torch.randn(S, d, generator=gen), 0.1 * torch.randn(S, generator=gen), W_dec,
               0.1 * torch.randn(d, generator=gen)]


def test_sparse_step_gradients_match_autograd():
    n, S, d, k = 48, 80, 12, 4
    x, params = _random_step_inputs(0, n, S, d)
    dead = torch.zeros(S, dtype=torch.bool)
    dead[::4] = True
    ours = [p.clone() for p in params]
    res = sae_step(x, *ours, k=k, dead=dead, aux_k=5, aux_rows=30)
    loss, grads = _autograd_reference(x, params, k, dead, aux_k=5, aux_rows=30)
    assert res.loss == pytest.approx(loss, rel=1e-5)
    assert res.l0 == pytest.approx(k)
    for p, g in zip(ours, grads):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)


def test_matryoshka_step_gradients_match_autograd():
    """With prefixes, the loss is the mean of each prefix's reconstruction error (the same selection), and the
    sparse backward gives autograd's gradients; an unordered prefix list is refused."""
    n, S, d, k = 40, 64, 10, 5
    x, params = _random_step_inputs(1, n, S, d)
    dead = torch.zeros(S, dtype=torch.bool)
    dead[1::5] = True
    ours = [p.clone() for p in params]
    res = sae_step(x, *ours, k=k, dead=dead, aux_k=4, aux_rows=25, prefixes=(8, 24))
    loss, grads = _autograd_reference(x, params, k, dead, aux_k=4, aux_rows=25, prefixes=(8, 24))
    assert res.loss == pytest.approx(loss, rel=1e-5)
    for p, g in zip(ours, grads):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)
    plain = [p.clone() for p in params]
    nested, whole = sae_step(x, *plain, k=k, prefixes=(8, 24)), sae_step(x, *plain, k=k)
    assert nested.fvu == pytest.approx(whole.fvu) and nested.mse != pytest.approx(whole.mse)  # fvu: the whole one's
    with pytest.raises(ValueError, match="prefixes"):
        sae_step(x, *plain, k=k, prefixes=(24, 8))


def test_batch_topk_threshold_hint_gives_the_exact_selection():
    pre = torch.randn(32, 50, generator=torch.Generator().manual_seed(3))
    exact, kth = batch_topk(pre, 64)
    hinted, _ = batch_topk(pre, 64, threshold_hint=kth * 1.1)  # candidates above 0.8 x hint
    assert torch.equal(exact.rows, hinted.rows) and torch.equal(exact.cols, hinted.cols)
    assert exact.vals.numel() == 64 and float(exact.vals.min()) == pytest.approx(kth)


def test_store_roundtrip_shuffle_and_resume(tmp_path):
    d = 4
    writer = ActivationWriter(tmp_path, d_model=d, chunk_tokens=5)
    acts = np.arange(13 * d, dtype=np.float32).reshape(13, d)
    index = np.stack([np.arange(13), np.zeros(13)], 1).astype(np.int32)
    writer.append(acts[:6], index[:6], rows_done=1)  # flushes a 6-row chunk
    writer.append(acts[6:], index[6:], rows_done=2)
    writer.finish({"layer": 0})
    store = ActivationStore(tmp_path)
    assert len(store) == 13 and len(store.acts) == 2
    rows = np.array([12, 0, 7, 5])
    assert torch.equal(store.get(rows), torch.from_numpy(acts[rows]))
    assert store.positions(rows)[:, 0].tolist() == [12, 0, 7, 5]
    stream = store.batches(4, seed=1)
    first = [next(stream) for _ in range(6)]  # 3 batches per epoch, two epochs
    epoch0 = torch.cat(first[:3])
    assert len({tuple(r.tolist()) for r in epoch0}) == 12  # no repeats inside an epoch
    resumed = store.batches(4, seed=1, start_step=4)
    assert torch.equal(next(resumed), first[4])  # batch s is a function of (seed, s)
    # a resumed writer continues after the last chunk
    assert ActivationWriter(tmp_path, d_model=d).rows_done == 2


def test_corpus_split_is_stable_and_pack_separates_documents():
    docs = [Document("wiki", f"doc{i}", text="x") for i in range(400)]
    held = [is_held_out(doc, 0, 0.1) for doc in docs]
    assert held == [is_held_out(doc, 0, 0.1) for doc in reversed(docs)][::-1]
    assert 20 < sum(held) < 60
    rows = pack([[5, 6, 7], [8, 9]], sep=0, seq_len=3)
    assert rows.tolist() == [[5, 6, 7], [0, 8, 9]]


def test_geometric_median_and_lr_schedule():
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])
    m = geometric_median(pts, iters=500)
    assert float(m.norm()) < 1.0  # robust to the far point, unlike the mean
    assert lr_factor(0, 100, 10, 0.2) == pytest.approx(0.1)
    assert lr_factor(50, 100, 10, 0.2) == 1.0
    assert lr_factor(90, 100, 10, 0.2) == pytest.approx(0.5)
