"""steering.sae.formats: each external layout written by hand, loaded, and checked
against a reference computed directly from the raw arrays; SAELens round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from steering.sae.autoencoder import SAEConfig, SAEConfigError, SparseAutoencoder
from steering.sae.formats import FORMATS, SAEFormatError, detect_format, load_sae, save_sae

torch.set_num_threads(1)
D_IN, D_SAE = 16, 64


def raw_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights in the SAELens layout, as float32 numpy arrays."""
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.standard_normal((D_IN, D_SAE)).astype(np.float32) / 4,
        "W_dec": rng.standard_normal((D_SAE, D_IN)).astype(np.float32) / 4,
        "b_enc": rng.standard_normal(D_SAE).astype(np.float32) / 4,
        "b_dec": rng.standard_normal(D_IN).astype(np.float32) / 4,
        "threshold": rng.uniform(0.0, 0.8, D_SAE).astype(np.float32),
    }


def tensors(w: dict[str, np.ndarray], names=("W_enc", "W_dec", "b_enc", "b_dec")) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(w[k]) for k in names}


def inputs(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, 5, D_IN, generator=torch.Generator().manual_seed(seed))


def reference(w, x, *, arch, k=None, sub_b_dec=True):
    """Hand-written encode and decode from the raw arrays (float64)."""
    t = {n: torch.from_numpy(a).double() for n, a in w.items()}
    x = x.double()
    pre = (x - t["b_dec"] if sub_b_dec else x) @ t["W_enc"] + t["b_enc"]
    if arch == "relu":
        f = pre.clamp(min=0)
    elif arch == "jumprelu":
        f = pre.clamp(min=0) * (pre > t["threshold"])
    else:
        vals, idx = pre.clamp(min=0).topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, idx, vals)
    return f, f @ t["W_dec"] + t["b_dec"]


def check_matches(sae: SparseAutoencoder, w, *, arch, k=None, sub_b_dec=True):
    x = inputs()
    f_ref, x_hat_ref = reference(w, x, arch=arch, k=k, sub_b_dec=sub_b_dec)
    assert (f_ref != 0).any() and (f_ref == 0).any()
    f = sae.encode(x)
    assert torch.allclose(f.double(), f_ref, atol=1e-5)
    assert torch.allclose(sae.decode(f).double(), x_hat_ref, atol=1e-5)


def write_saelens(folder: Path, cfg: dict, weights: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(weights, folder / "sae_weights.safetensors")
    return folder


# ------------------------------------------------------------------ SAELens
def test_saelens_v6_jumprelu_with_sparsity(tmp_path):
    w = raw_weights(1)
    cfg = {
        "architecture": "jumprelu",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "meta": {"model_name": "tiny", "hook_name": "blocks.3.hook_resid_post", "hook_layer": 3, "sae_lens_version": "6.5.0"},
    }
    folder = write_saelens(tmp_path / "sae", cfg, tensors(w, ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")))
    log_sparsity = torch.linspace(-5, -1, D_SAE)
    save_file({"sparsity": log_sparsity}, folder / "sparsity.safetensors")
    assert detect_format(folder).name == "saelens"
    sae = load_sae(folder)
    assert (sae.cfg.architecture, sae.cfg.hook_layer, sae.cfg.hook_site) == ("jumprelu", 3, "resid_post")
    assert sae.cfg.model_name == "tiny" and sae.cfg.metadata["source_format"] == "saelens"
    assert sae.W_enc.shape == (D_IN, D_SAE) and sae.W_dec.shape == (D_SAE, D_IN)
    assert torch.allclose(sae.firing_frequency, 10**log_sparsity)
    check_matches(sae, w, arch="jumprelu")


def test_saelens_standard_is_relu_and_file_path_is_accepted(tmp_path):
    w = raw_weights(2)
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "hook_name": "blocks.0.hook_resid_pre", "hook_layer": 0}
    folder = write_saelens(tmp_path / "sae", cfg, tensors(w))
    sae = load_sae(folder / "cfg.json")
    assert (sae.cfg.architecture, sae.cfg.hook_layer, sae.cfg.hook_site) == ("relu", 0, "resid_pre")
    assert not sae.has_stats
    check_matches(sae, w, arch="relu")


def test_saelens_old_keys_topk(tmp_path):
    """SAELens < 6: hook_point names, a bool normalize flag, TopK marked by its activation."""
    w = raw_weights(3)
    cfg = {
        "architecture": "standard",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 4},
        "d_in": D_IN,
        "d_sae": D_SAE,
        "hook_point": "blocks.5.hook_resid_pre",
        "hook_point_layer": 5,
        "normalize_activations": False,
        "apply_b_dec_to_input": False,
    }
    sae = load_sae(write_saelens(tmp_path / "old", cfg, tensors(w)))
    c = sae.cfg
    assert (c.architecture, c.k, c.hook_layer, c.hook_site, c.normalize_activations) == ("topk", 4, 5, "resid_pre", "none")
    assert not c.apply_b_dec_to_input
    check_matches(sae, w, arch="topk", k=4, sub_b_dec=False)


def test_saelens_batchtopk_training_checkpoint(tmp_path):
    w = raw_weights(4)
    weights = {**tensors(w), "topk_threshold": torch.tensor(0.3, dtype=torch.float64)}
    cfg = {"architecture": "batchtopk", "k": 6.0, "d_in": D_IN, "d_sae": D_SAE, "meta": {"hook_name": "blocks.1.hook_resid_post"}}
    sae = load_sae(write_saelens(tmp_path / "bt", cfg, weights))
    assert (sae.cfg.architecture, sae.cfg.k) == ("batchtopk", 6)
    assert sae.uses_threshold and torch.allclose(sae.threshold, torch.full((D_SAE,), 0.3))
    check_matches(sae, {**w, "threshold": np.full(D_SAE, 0.3, np.float32)}, arch="jumprelu")


def test_saelens_finetuning_scaling_factor_is_folded(tmp_path):
    w = raw_weights(5)
    scale = torch.linspace(0.5, 2.0, D_SAE)
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "hook_name": "blocks.2.hook_resid_post"}
    sae = load_sae(write_saelens(tmp_path / "s", cfg, {**tensors(w), "scaling_factor": scale}))
    x = inputs()
    f_ref, _ = reference(w, x, arch="relu")
    x_hat = (f_ref * scale.double()) @ torch.from_numpy(w["W_dec"]).double() + torch.from_numpy(w["b_dec"]).double()
    assert torch.allclose(sae(x).double(), x_hat, atol=1e-5)


def test_saelens_non_residual_hook_needs_override(tmp_path):
    w = raw_weights(6)
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "hook_name": "blocks.2.hook_mlp_out"}
    folder = write_saelens(tmp_path / "mlp", cfg, tensors(w))
    with pytest.raises(SAEFormatError, match="hook_mlp_out") as err:
        load_sae(folder)
    assert err.value.param == "hook_site"
    sae = load_sae(folder, hook_site="resid_post")
    assert (sae.cfg.hook_layer, sae.cfg.hook_site) == (2, "resid_post")


def test_saelens_unsupported_architecture_and_bad_shapes(tmp_path):
    w = raw_weights(7)
    base = {"d_in": D_IN, "d_sae": D_SAE, "hook_name": "blocks.2.hook_resid_post"}
    with pytest.raises(SAEFormatError, match="gated") as err:
        load_sae(write_saelens(tmp_path / "g", {**base, "architecture": "gated"}, tensors(w)))
    assert err.value.param == "architecture"
    with pytest.raises(SAEFormatError, match="W_enc") as err:
        load_sae(write_saelens(tmp_path / "t", {**base, "architecture": "standard", "d_in": D_IN + 1}, tensors(w)))
    assert err.value.param == "W_enc"
    with pytest.raises(SAEFormatError, match="threshold") as err:
        load_sae(write_saelens(tmp_path / "j", {**base, "architecture": "jumprelu"}, tensors(w)))
    assert err.value.param == "threshold"


# -------------------------------------------------------------- Gemma Scope
def write_gemma_scope(root: Path, w: dict[str, np.ndarray]) -> Path:
    folder = root / "layer_12" / "width_16k" / "average_l0_71"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **w)
    return folder


def test_gemma_scope_folder_and_file(tmp_path):
    w = raw_weights(8)
    folder = write_gemma_scope(tmp_path, w)
    for path in (folder, folder / "params.npz"):
        assert detect_format(path).name == "gemma_scope"
        sae = load_sae(path)
        c = sae.cfg
        assert (c.architecture, c.d_in, c.d_sae, c.hook_layer, c.hook_site) == ("jumprelu", D_IN, D_SAE, 12, "resid_post")
        assert not c.apply_b_dec_to_input
        check_matches(sae, w, arch="jumprelu", sub_b_dec=False)


def test_gemma_scope_layer_override_and_missing_layer(tmp_path):
    w = raw_weights(9)
    w["threshold"][:8] = -0.5  # relu(pre) * (pre > -0.5) still never goes negative
    assert load_sae(write_gemma_scope(tmp_path, w), hook_layer=4, hook_site="resid_pre").cfg.hook_layer == 4
    np.savez(tmp_path / "params.npz", **w)
    with pytest.raises(SAEFormatError) as err:
        load_sae(tmp_path / "params.npz")
    assert err.value.param == "hook_layer"
    sae = load_sae(tmp_path / "params.npz", hook_layer=2)
    assert sae.cfg.hook_layer == 2
    check_matches(sae, w, arch="jumprelu", sub_b_dec=False)


# ----------------------------------------------------------------- sparsify
def write_sparsify(folder: Path, w: dict[str, np.ndarray], k: int = 8) -> Path:
    folder.mkdir(parents=True)
    cfg = {
        "activation": "topk",
        "expansion_factor": D_SAE // D_IN,
        "normalize_decoder": True,
        "num_latents": 0,
        "k": k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D_IN,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    weights = {
        "encoder.weight": torch.from_numpy(w["W_enc"].T.copy()),
        "encoder.bias": torch.from_numpy(w["b_enc"]),
        "W_dec": torch.from_numpy(w["W_dec"]),
        "b_dec": torch.from_numpy(w["b_dec"]),
    }
    save_file(weights, folder / "sae.safetensors")
    return folder


def test_sparsify_single_hookpoint(tmp_path):
    w = raw_weights(10)
    folder = write_sparsify(tmp_path / "layers.15", w)
    assert detect_format(folder).name == "sparsify"
    sae = load_sae(folder)
    c = sae.cfg
    assert (c.architecture, c.k, c.d_in, c.d_sae, c.hook_layer, c.hook_site) == ("topk", 8, D_IN, D_SAE, 15, "resid_post")
    check_matches(sae, w, arch="topk", k=8)


def test_sparsify_parent_folder_picks_by_layer(tmp_path):
    w3, w7 = raw_weights(11), raw_weights(12)
    write_sparsify(tmp_path / "layers.3", w3)
    write_sparsify(tmp_path / "layers.7", w7, k=4)
    assert detect_format(tmp_path).name == "sparsify"
    sae = load_sae(tmp_path, hook_layer=7)
    assert (sae.cfg.hook_layer, sae.cfg.k) == (7, 4)
    check_matches(sae, w7, arch="topk", k=4)
    for layer in (None, 5):
        with pytest.raises(SAEFormatError, match=r"layers\.3.*layers\.7") as err:
            load_sae(tmp_path, hook_layer=layer)
        assert err.value.param == "hook_layer"


def test_sparsify_only_subfolder_is_picked(tmp_path):
    write_sparsify(tmp_path / "layers.9", raw_weights(13))
    assert load_sae(tmp_path).cfg.hook_layer == 9


def test_sparsify_unknown_hookpoint_and_transcoder(tmp_path):
    folder = write_sparsify(tmp_path / "layers.2.mlp", raw_weights(14))
    with pytest.raises(SAEFormatError) as err:
        load_sae(folder)
    assert err.value.param == "hook_layer"
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "transcode": True}))
    with pytest.raises(SAEFormatError, match="transcoder"):
        load_sae(folder, hook_layer=2)


# ---------------------------------------------------------- save and reload
def trained_like(arch: str, threshold: bool = True, **kw) -> SparseAutoencoder:
    cfg = SAEConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        architecture=arch,
        k=8 if arch in ("topk", "batchtopk") else None,
        hook_layer=15,
        hook_site="resid_pre",
        model_name="tiny-llama",
        metadata={"run": "test"},
        **kw,
    )
    sae = SparseAutoencoder(cfg)
    gen = torch.Generator().manual_seed(21)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / 4)
        sae.threshold.abs_()
        if not threshold:
            sae.threshold.zero_()
    sae.set_feature_stats(torch.rand(D_SAE, generator=gen) * 5, torch.rand(D_SAE, generator=gen) / 10)
    return sae


@pytest.mark.parametrize(
    "arch,threshold,saelens_arch",
    [
        ("relu", False, "standard"),
        ("jumprelu", True, "jumprelu"),
        ("topk", False, "topk"),
        ("batchtopk", True, "jumprelu"),
        ("batchtopk", False, "topk"),
    ],
)
def test_round_trip(tmp_path, arch, threshold, saelens_arch):
    sae = trained_like(arch, threshold, normalize_activations="expected_average_only_in", norm_scaling_factor=0.5)
    out = save_sae(sae, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "feature_stats.safetensors", "sae_weights.safetensors"]
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == saelens_arch
    assert (cfg["d_in"], cfg["d_sae"], cfg["hook_name"], cfg["hook_layer"]) == (D_IN, D_SAE, "blocks.15.hook_resid_pre", 15)
    assert cfg["model_name"] == "tiny-llama" and cfg["dtype"] == "float32"
    assert cfg["steering_config"]["architecture"] == arch
    if saelens_arch == "topk":
        assert cfg["activation_fn_kwargs"] == {"k": 8} and cfg["k"] == 8
    stored = load_file(out / "sae_weights.safetensors")
    assert ("threshold" in stored) == (arch in ("jumprelu", "batchtopk"))
    assert stored["W_enc"].shape == (D_IN, D_SAE) and stored["W_dec"].shape == (D_SAE, D_IN)

    back = load_sae(out)
    assert back.cfg == sae.cfg
    for name, value in sae.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    x = inputs()
    assert torch.equal(back.encode(x), sae.encode(x))
    assert torch.equal(back(x), sae(x))


def test_round_trip_without_saelens_steering_key_still_loads(tmp_path):
    """cfg.json alone (as SAELens would read it) gives back the same computation."""
    for arch, threshold in (("relu", False), ("jumprelu", True), ("topk", False), ("batchtopk", True)):
        sae = trained_like(arch, threshold)
        out = save_sae(sae, tmp_path / arch)
        cfg = json.loads((out / "cfg.json").read_text())
        del cfg["steering_config"]
        (out / "cfg.json").write_text(json.dumps(cfg))
        back = load_sae(out)
        assert (back.cfg.hook_layer, back.cfg.hook_site, back.cfg.model_name) == (15, "resid_pre", "tiny-llama")
        assert torch.allclose(back.encode(inputs()), sae.encode(inputs()), atol=1e-6), arch


def test_fp16_saving_and_dtype_on_load(tmp_path):
    sae = trained_like("jumprelu")
    out = save_sae(sae, tmp_path / "half", dtype=torch.float16)
    stored = load_file(out / "sae_weights.safetensors")
    assert all(t.dtype == torch.float16 for t in stored.values())
    assert load_file(out / "feature_stats.safetensors")["max_activation"].dtype == torch.float32
    assert json.loads((out / "cfg.json").read_text())["dtype"] == "float16"
    back = load_sae(out)
    assert back.W_enc.dtype == torch.float32 and back.cfg.dtype == "float32"
    assert torch.equal(back.W_enc, sae.W_enc.detach().half().float())
    assert torch.allclose(back.W_dec, sae.W_dec, atol=1e-3)
    assert torch.equal(back.max_activation, sae.max_activation)
    half = load_sae(out, dtype="float16")
    assert half.W_dec.dtype == torch.float16 and half.cfg.dtype == "float16"
    with pytest.raises(SAEConfigError) as err:
        load_sae(out, dtype=torch.int32)
    assert err.value.param == "dtype"


def test_stats_only_when_known_and_never_stale(tmp_path):
    out = save_sae(trained_like("relu"), tmp_path / "s")
    assert (out / "feature_stats.safetensors").exists()
    fresh = SparseAutoencoder.random(SAEConfig(d_in=D_IN, d_sae=D_SAE), seed=1)
    save_sae(fresh, out)
    assert not (out / "feature_stats.safetensors").exists()
    back = load_sae(out)
    assert not back.has_stats and bool(torch.isnan(back.firing_frequency).all())
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_overrides_apply_to_own_files(tmp_path):
    out = save_sae(trained_like("topk"), tmp_path / "o")
    back = load_sae(out, hook_layer=2, hook_site="resid_post")
    assert (back.cfg.hook_layer, back.cfg.hook_site) == (2, "resid_post")
    with pytest.raises(SAEConfigError) as err:
        load_sae(out, hook_site="mlp_out")
    assert err.value.param == "hook_site"


# ------------------------------------------------------------------- errors
def test_unknown_layout_lists_formats(tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(SAEFormatError) as err:
        load_sae(tmp_path)
    message = str(err.value)
    for name in FORMATS:
        assert name in message
    for file in ("sae_weights.safetensors", "params.npz", "sae.safetensors"):
        assert file in message
    assert err.value.param == "path"


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_sae(tmp_path / "nope")
