"""Invariants of steering.sae.autoencoder.SparseAutoencoder on tiny hand-made and seeded SAEs."""

from __future__ import annotations

import math

import pytest
import torch

from steering.sae.autoencoder import (
    ARCHITECTURES,
    NORMALIZATIONS,
    NormInfo,
    SAEConfig,
    SAEConfigError,
    SparseAutoencoder,
)

torch.set_num_threads(1)
D_IN, D_SAE = 16, 64


def make_cfg(**kw) -> SAEConfig:
    base = dict(d_in=D_IN, d_sae=D_SAE)
    if kw.get("architecture") in ("topk", "batchtopk"):
        base["k"] = 8
    return SAEConfig(**{**base, **kw})


def random_sae(seed: int = 0, threshold: float | None = None, **kw) -> SparseAutoencoder:
    """A seeded SAE with random biases (and thresholds), unlike SparseAutoencoder.random."""
    sae = SparseAutoencoder.random(make_cfg(**kw), seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.b_enc.copy_(0.3 * torch.randn(D_SAE, generator=gen))
        sae.b_dec.copy_(0.3 * torch.randn(D_IN, generator=gen))
        if threshold is not None:
            sae.threshold.copy_(threshold * torch.rand(D_SAE, generator=gen))
    return sae


def identity_sae(arch: str = "relu", **kw) -> SparseAutoencoder:
    """d_in = d_sae = 4, W_enc = W_dec = I, zero biases: pre-activations equal x."""
    sae = SparseAutoencoder(SAEConfig(d_in=4, d_sae=4, architecture=arch, **kw))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.W_dec.copy_(torch.eye(4))
    return sae


def perfect_sae(normalize: str = "none", **kw) -> SparseAutoencoder:
    """d_sae = 2 d_in with W_enc = [I, -I], W_dec = [I; -I]: relu(x) - relu(-x) == x."""
    sae = SparseAutoencoder(SAEConfig(d_in=D_IN, d_sae=2 * D_IN, normalize_activations=normalize, **kw))
    eye = torch.eye(D_IN)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    return sae


def inputs(seed: int = 0, shape=(3, 5)) -> torch.Tensor:
    return torch.randn(*shape, D_IN, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ shapes
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_encode_decode_shapes(arch):
    sae = random_sae(architecture=arch)
    x = inputs()
    f = sae.encode(x)
    assert f.shape == (3, 5, D_SAE)
    assert sae.decode(f).shape == (3, 5, D_IN)
    assert sae(x).shape == (3, 5, D_IN)
    assert sae.encode(x[0, 0]).shape == (D_SAE,)
    assert torch.allclose(sae.decode(f), sae(x), atol=1e-6)


# ------------------------------------------------------------- activations
def test_relu_semantics():
    f = identity_sae("relu").encode(torch.tensor([1.0, -2.0, 3.0, -0.5]))
    assert torch.equal(f, torch.tensor([1.0, 0.0, 3.0, 0.0]))


def test_jumprelu_zeroes_at_and_below_threshold():
    sae = identity_sae("jumprelu")
    with torch.no_grad():
        sae.threshold.copy_(torch.tensor([0.5, 0.5, 3.5, 2.0]))
    f = sae.encode(torch.tensor([1.0, 0.4, 3.0, 2.0]))
    # 0.4 < 0.5 and 3.0 < 3.5 are cut; 2.0 == threshold is cut too (strict >).
    assert torch.equal(f, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert sae.uses_threshold and sae.supports_sparse_encode


def test_topk_keeps_k_largest():
    sae = identity_sae("topk", k=2)
    assert torch.equal(sae.encode(torch.tensor([1.0, 5.0, 3.0, -2.0])), torch.tensor([0.0, 5.0, 3.0, 0.0]))
    # Negative pre-activations never fire, even when among the top k.
    assert torch.equal(sae.encode(torch.tensor([-1.0, 5.0, -3.0, -2.0])), torch.tensor([0.0, 5.0, 0.0, 0.0]))
    assert not sae.supports_sparse_encode


def test_topk_exactly_k_per_token():
    sae = random_sae(architecture="topk")
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive
    f = sae.encode(inputs(shape=(4, 7)))
    assert torch.equal((f != 0).sum(-1), torch.full((4, 7), 8))
    # The kept ones are the largest pre-activations of each token.
    x = inputs(shape=(4, 7))
    pre = sae.pre_activations(x)
    kept = torch.where(sae.encode(x) != 0, pre, torch.inf).amin(-1)
    dropped = torch.where(sae.encode(x) == 0, pre, -torch.inf).amax(-1)
    assert bool((kept >= dropped).all())


def test_batchtopk_runs_as_jumprelu_with_threshold_else_topk():
    x = inputs()
    bt = random_sae(architecture="batchtopk")
    tk = random_sae(architecture="topk")
    assert not bt.uses_threshold and not bt.supports_sparse_encode
    assert torch.equal(bt.encode(x), tk.encode(x))
    bt_thr = random_sae(architecture="batchtopk", threshold=0.5)
    jr = random_sae(architecture="jumprelu", threshold=0.5)
    assert bt_thr.uses_threshold and bt_thr.supports_sparse_encode
    assert torch.equal(bt_thr.encode(x), jr.encode(x))
    # Not limited to k per token: the threshold alone decides.
    assert not torch.equal((bt_thr.encode(x) != 0).sum(-1), torch.full((3, 5), 8))


@pytest.mark.parametrize(
    "arch,threshold", [("relu", None), ("jumprelu", 0.5), ("topk", None), ("batchtopk", None), ("batchtopk", 0.5)]
)
def test_sparse_path_equals_dense(arch, threshold):
    sae = random_sae(architecture=arch, threshold=threshold, seed=3)
    x = inputs(seed=4)
    idx = torch.tensor([0, 5, 63, 17, 5])
    dense = sae.encode(x)
    assert (dense != 0).any()
    assert torch.allclose(sae.encode_features(x, idx), dense[..., idx], atol=1e-5)


def test_sparse_activate_on_topk_refuses_indices():
    sae = random_sae(architecture="topk")
    with pytest.raises(ValueError, match="topk"):
        sae.activate(torch.zeros(3), torch.tensor([0, 1, 2]))


# ----------------------------------------------------------- normalisation
@pytest.mark.parametrize("mode", NORMALIZATIONS)
def test_denormalize_inverts_normalize(mode):
    sae = random_sae(normalize_activations=mode, norm_scaling_factor=0.25)
    x = 3.0 * inputs() + 1.0
    x_n, info = sae.normalize(x)
    assert torch.allclose(sae.denormalize(x_n, info), x, atol=1e-5)
    if mode == "none":
        assert torch.equal(x_n, x)
    if mode == "expected_average_only_in":
        assert torch.allclose(x_n, 0.25 * x)
    if mode == "layer_norm":
        assert torch.allclose(x_n.mean(-1), torch.zeros(3, 5), atol=1e-5)
        assert torch.allclose(x_n.pow(2).mean(-1), torch.ones(3, 5), atol=1e-3)


@pytest.mark.parametrize("mode", NORMALIZATIONS)
def test_perfect_sae_reconstructs_through_normalisation(mode):
    sae = perfect_sae(mode, norm_scaling_factor=0.1)
    x = 5.0 * inputs() - 2.0
    assert torch.allclose(sae(x), x, atol=1e-4)
    x_n, info = sae.normalize(x)
    assert torch.allclose(sae.decode(sae.encode(x), info), x, atol=1e-4)


def test_decode_uses_the_per_call_norm_info():
    sae = perfect_sae("layer_norm")
    x1, x2 = inputs(seed=1), 10.0 * inputs(seed=2) + 3.0
    _, info1 = sae.normalize(x1)
    _, info2 = sae.normalize(x2)
    f2 = sae.encode(x2)
    # The features of a normalised input carry no scale: only info2 brings x2 back.
    assert torch.allclose(sae.decode(f2, info2), x2, atol=1e-4)
    assert not torch.allclose(sae.decode(f2, info1), x2, atol=1e-1)
    with pytest.raises(ValueError, match="NormInfo"):
        sae.decode(f2)
    # A delta in normalised space maps back by the token's own scale.
    delta = torch.ones(3, 5, D_IN)
    assert torch.allclose(sae.denormalize_delta(delta, info2), delta / info2.scale)


def test_expected_average_decode_without_info_uses_config_factor():
    sae = random_sae(normalize_activations="expected_average_only_in", norm_scaling_factor=0.5)
    x = inputs()
    f = sae.encode(x)
    assert torch.allclose(sae.decode(f), sae(x), atol=1e-6)
    assert torch.allclose(sae.decode(f), (f @ sae.W_dec + sae.b_dec) / 0.5, atol=1e-6)
    assert torch.allclose(sae.decode(f, NormInfo()), f @ sae.W_dec + sae.b_dec, atol=1e-6)


def test_layer_norm_rows_do_not_leak():
    sae = random_sae(normalize_activations="layer_norm")
    x = inputs()
    whole = sae(x)
    for i in range(x.shape[0]):
        assert torch.allclose(sae(x[i : i + 1]), whole[i : i + 1], atol=1e-6)


def test_apply_b_dec_to_input():
    x = inputs()
    on = random_sae(apply_b_dec_to_input=True)
    off = random_sae(apply_b_dec_to_input=False)
    assert torch.allclose(on.pre_activations(x), (x - on.b_dec) @ on.W_enc + on.b_enc, atol=1e-6)
    assert torch.allclose(off.pre_activations(x), x @ off.W_enc + off.b_enc, atol=1e-6)


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "kw,param",
    [
        (dict(architecture="gated"), "architecture"),
        (dict(architecture="topk", k=None), "k"),
        (dict(architecture="topk", k=0), "k"),
        (dict(architecture="batchtopk", k=D_SAE + 1), "k"),
        (dict(normalize_activations="constant_norm_rescale"), "normalize_activations"),
        (dict(hook_site="mlp_out"), "hook_site"),
        (dict(norm_scaling_factor=0.0), "norm_scaling_factor"),
        (dict(norm_scaling_factor=math.nan), "norm_scaling_factor"),
        (dict(d_in=0), "d_in"),
        (dict(d_sae=-1), "d_sae"),
        (dict(hook_layer=-1), "hook_layer"),
        (dict(dtype="int8"), "dtype"),
        (dict(dtype="float33"), "dtype"),
    ],
)
def test_bad_config_names_the_parameter(kw, param):
    with pytest.raises(SAEConfigError) as err:
        SAEConfig(**{"d_in": D_IN, "d_sae": D_SAE, **kw})
    assert err.value.param == param
    assert isinstance(err.value, ValueError)


def test_config_dict_round_trip_ignores_unknown_keys():
    cfg = make_cfg(architecture="topk", hook_layer=7, hook_site="resid_pre", metadata={"run": "x"})
    data = cfg.to_dict()
    assert SAEConfig.from_dict({**data, "not_a_field": 1}) == cfg


def test_random_is_seeded_with_unit_decoder_rows():
    a = SparseAutoencoder.random(make_cfg(architecture="jumprelu"), seed=5)
    b = SparseAutoencoder.random(make_cfg(architecture="jumprelu"), seed=5)
    c = SparseAutoencoder.random(make_cfg(architecture="jumprelu"), seed=6)
    assert torch.equal(a.W_dec, b.W_dec) and not torch.equal(a.W_dec, c.W_dec)
    assert torch.allclose(a.W_dec.norm(dim=-1), torch.ones(D_SAE), atol=1e-6)
    assert torch.equal(a.W_enc, a.W_dec.T)
    assert bool((a.threshold > 0).all())


def test_feature_stats():
    sae = random_sae()
    assert not sae.has_stats and bool(torch.isnan(sae.firing_frequency).all())
    sae.set_feature_stats(max_activation=torch.arange(D_SAE, dtype=torch.float32))
    assert sae.has_stats and bool(torch.isnan(sae.firing_frequency).all())
    sae.set_feature_stats(firing_frequency=torch.full((D_SAE,), 0.01))
    assert torch.allclose(sae.firing_frequency, torch.full((D_SAE,), 0.01))
    assert "topk" in random_sae(architecture="topk").describe()


def test_dtype_follows_config():
    sae = SparseAutoencoder(make_cfg(dtype="bfloat16"))
    assert sae.W_enc.dtype == torch.bfloat16 and sae.threshold.dtype == torch.bfloat16
