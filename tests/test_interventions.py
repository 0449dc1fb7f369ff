"""Clamp specs and their exact edit: invariants on tiny models and small SAEs."""

from __future__ import annotations

import math

import pytest
import torch

from steering.errors import SteeringError
from steering.hooks import capture, run_until_capture, steering
from steering.interventions import (
    FeatureClamp,
    SteeringSpec,
    apply_plan,
    build_plan,
)
from steering.sae.autoencoder import SAEConfig, SparseAutoencoder


def make_sae(d_in: int = 64, d_sae: int = 256, architecture: str = "relu", layer: int = 2, **kw) -> SparseAutoencoder:
    """A small seeded SAE with random biases, thresholds and known statistics."""
    k = kw.pop("k", 8 if architecture in ("topk", "batchtopk") else None)
    sae = SparseAutoencoder.random(SAEConfig(d_in=d_in, d_sae=d_sae, architecture=architecture, k=k, hook_layer=layer, **kw), seed=1)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(d_sae, generator=gen) * 0.1)
        sae.b_dec.copy_(torch.randn(d_in, generator=gen) * 0.1)
        if architecture in ("jumprelu", "batchtopk"):
            sae.threshold.copy_(torch.rand(d_sae, generator=gen) * 0.3 + 0.05)
    sae.set_feature_stats(torch.rand(d_sae, generator=gen) + 1.0, torch.rand(d_sae, generator=gen) * 0.1)
    return sae.requires_grad_(False)


def dense_reference(sae: SparseAutoencoder, x: torch.Tensor, spec: SteeringSpec) -> torch.Tensor:
    """x + decode(f') - decode(f) with the full encode: the definition of a clamp."""
    x_n, info = sae.normalize(x)
    f = sae.activate(sae.pre_activations(x_n))
    f_new = f.clone()
    for c in spec.features:
        v = c.raw_value(sae)
        if c.mode == "clamp":
            f_new[..., c.index] = v
        elif c.mode == "add":
            f_new[..., c.index] = f[..., c.index] + v
        else:
            f_new[..., c.index] = f[..., c.index] * v
    return x + sae.denormalize_delta((f_new - f) @ sae.W_dec, info)


ARCHS = ["relu", "jumprelu", "topk", "batchtopk"]
NORMS = [("none", 1.0), ("expected_average_only_in", 0.37), ("layer_norm", 1.0)]


@pytest.mark.parametrize("architecture", ARCHS)
@pytest.mark.parametrize("norm,scale", NORMS)
def test_sparse_path_equals_dense_reference(architecture, norm, scale):
    sae = make_sae(architecture=architecture, normalize_activations=norm, norm_scaling_factor=scale)
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(3)) * 2
    spec = SteeringSpec((FeatureClamp(3, 4.0), FeatureClamp(17, -2.0, "add"), FeatureClamp(40, 0.5, "scale"), FeatureClamp(41, 7.5, "clamp", "raw")))
    plan = build_plan(sae, [spec] * 3)
    torch.testing.assert_close(apply_plan(sae, plan, x), dense_reference(sae, x, spec), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("architecture", ARCHS)
def test_clamping_every_feature_to_its_own_value_is_identity(architecture):
    sae = make_sae(architecture=architecture)
    x = torch.randn(1, 1, 64, generator=torch.Generator().manual_seed(4))
    f = sae.encode(x)[0, 0]
    spec = SteeringSpec(tuple(FeatureClamp(i, float(f[i]), "clamp", "raw") for i in range(sae.d_sae)))
    out = apply_plan(sae, build_plan(sae, [spec]), x)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_rows_are_isolated_and_unclamped_rows_bit_identical():
    sae = make_sae()
    x = torch.randn(4, 6, 64, generator=torch.Generator().manual_seed(5))
    a = SteeringSpec((FeatureClamp(1, 5.0),))
    b = SteeringSpec((FeatureClamp(2, -3.0, "add"), FeatureClamp(9, 2.0, "scale")))
    out = apply_plan(sae, build_plan(sae, [a, None, b, SteeringSpec()]), x)
    assert torch.equal(out[1], x[1]) and torch.equal(out[3], x[3])
    torch.testing.assert_close(out[0:1], apply_plan(sae, build_plan(sae, [a]), x[0:1]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[2:3], apply_plan(sae, build_plan(sae, [b]), x[2:3]), atol=1e-6, rtol=0)
    assert not torch.allclose(out[0], x[0]) and not torch.allclose(out[2], x[2])


def test_generated_positions_only_touch_tokens_at_or_after_the_prompt():
    sae = make_sae()
    x = torch.randn(2, 6, 64, generator=torch.Generator().manual_seed(6))
    spec = SteeringSpec((FeatureClamp(5, 8.0),), positions="generated")
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [-1, -1, 0, 1, 2, 3]])
    out = apply_plan(sae, build_plan(sae, [spec, spec], prompt_lengths=[4, 2]), x, positions)
    assert torch.equal(out[0, :4], x[0, :4]) and not torch.allclose(out[0, 4:], x[0, 4:])
    assert torch.equal(out[1, :4], x[1, :4]) and not torch.allclose(out[1, 4:], x[1, 4:])


@pytest.mark.parametrize("positions,limit,window", [
    ("prompt", None, (0, 4)),      # the prompt only
    ("all", 2, (0, 6)),            # the prompt and the first two generated tokens
    ("generated", 1, (4, 5)),      # the first generated token only
    ("all", 0, (0, 4)),            # a zero limit is the prompt only
])
def test_windows_clamp_exactly_their_positions(positions, limit, window):
    sae = make_sae()
    x = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(8))
    spec = SteeringSpec((FeatureClamp(5, 8.0),), positions=positions, generated_limit=limit)
    plan = build_plan(sae, [spec, None], prompt_lengths=[4, 4])
    assert plan.needs_positions and spec.clamp_window(4) == window
    out = apply_plan(sae, plan, x, torch.arange(8).expand(2, 8))
    inside = torch.zeros(8, dtype=torch.bool)
    inside[window[0]: window[1]] = True
    assert torch.equal(out[0, ~inside], x[0, ~inside]) and torch.equal(out[1], x[1])
    assert not torch.isclose(out[0, inside], x[0, inside]).all(dim=-1).any()  # every token inside is edited


@pytest.mark.parametrize("limit", [-1, 2.5, True, "3"])
def test_bad_generated_limits_name_the_parameter(limit):
    with pytest.raises(SteeringError) as err:
        build_plan(make_sae(), [SteeringSpec((FeatureClamp(1, 1.0),), generated_limit=limit)], [4])
    assert err.value.param == "generated_limit"


def test_a_limit_needs_generated_tokens_and_prompt_lengths():
    sae = make_sae()
    with pytest.raises(SteeringError, match="positions 'prompt' clamps none") as err:
        build_plan(sae, [SteeringSpec((FeatureClamp(1, 1.0),), positions="prompt", generated_limit=3)], [4])
    assert err.value.param == "generated_limit"
    with pytest.raises(SteeringError, match="prompt lengths"):
        build_plan(sae, [SteeringSpec((FeatureClamp(1, 1.0),), generated_limit=3)])
    assert not build_plan(sae, [SteeringSpec((FeatureClamp(1, 1.0),))]).needs_positions


def test_prompt_variant_is_what_the_prompt_kv_depends_on():
    clamps = (FeatureClamp(1, 2.0),)
    assert SteeringSpec(clamps).prompt_variant == SteeringSpec(clamps, "prompt").prompt_variant
    assert SteeringSpec(clamps).prompt_variant == SteeringSpec(clamps, "all", 5).prompt_variant
    assert SteeringSpec(clamps, "generated").prompt_variant is None and SteeringSpec().prompt_variant is None
    assert SteeringSpec(clamps).prompt_variant != SteeringSpec((FeatureClamp(1, 3.0),)).prompt_variant


def test_clamp_sets_the_feature_to_the_value_in_max_units():
    sae = make_sae(architecture="jumprelu")
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(7))
    spec = SteeringSpec((FeatureClamp(11, 3.0),))
    out = apply_plan(sae, build_plan(sae, [spec] * 2), x)
    # The edit is (v - f) * W_dec[11]; this SAE's encoder column 11 is W_dec[11] (unit
    # norm), so feature 11's pre-activation moves by exactly v - f.
    pre_after = sae.pre_activations(out)[..., 11]
    pre_before = sae.pre_activations(x)[..., 11]
    f_before = sae.encode(x)[..., 11]
    torch.testing.assert_close(pre_after - pre_before, 3.0 * sae.max_activation[11] - f_before, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "clamp,param",
    [
        (FeatureClamp(256, 1.0), "features[0].index"),
        (FeatureClamp(-1, 1.0), "features[0].index"),
        (FeatureClamp(1, math.nan), "features[0].value"),
        (FeatureClamp(1, math.inf), "features[0].value"),
        (FeatureClamp(1, 1.0, mode="pin"), "features[0].mode"),
        (FeatureClamp(1, 1.0, unit="sigma"), "features[0].unit"),
    ],
)
def test_bad_specs_name_the_parameter(clamp, param):
    sae = make_sae()
    with pytest.raises(SteeringError) as err:
        build_plan(sae, [SteeringSpec((clamp,))])
    assert err.value.param == param


def test_bad_positions_and_duplicates_and_unknown_max():
    sae = make_sae()
    with pytest.raises(SteeringError, match="positions"):
        build_plan(sae, [SteeringSpec((FeatureClamp(1, 1.0),), positions="middle")])
    with pytest.raises(SteeringError) as err:
        build_plan(sae, [SteeringSpec((FeatureClamp(1, 1.0), FeatureClamp(1, 2.0)))])
    assert err.value.param == "features[1].index"
    sae.max_activation[4] = float("nan")
    with pytest.raises(SteeringError) as err:
        build_plan(sae, [SteeringSpec((FeatureClamp(4, 1.0),))])
    assert err.value.param == "features[0].unit"
    build_plan(sae, [SteeringSpec((FeatureClamp(4, 1.0, unit="raw"),))])  # raw needs no statistics


def test_merge_request_wins_on_same_index():
    preset = SteeringSpec((FeatureClamp(1, 2.0), FeatureClamp(2, 3.0)))
    request = SteeringSpec((FeatureClamp(2, -1.0, "add"),), positions="generated", generated_limit=7)
    merged = request.merged_over(preset)
    assert {c.index: (c.value, c.mode) for c in merged.features} == {1: (2.0, "clamp"), 2: (-1.0, "add")}
    assert merged.positions == "generated" and merged.generated_limit == 7


@pytest.mark.parametrize("model_fixture", ["tiny_llama", "tiny_gpt2"])
def test_empty_clamps_leave_the_model_bit_identical(request, model_fixture):
    model = request.getfixturevalue(model_fixture)
    sae = make_sae(layer=2)
    ids = torch.randint(3, 250, (2, 9), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with steering(model, sae, build_plan(sae, [None, SteeringSpec()])):
            hooked = model(input_ids=ids).logits
    assert torch.equal(plain, hooked)


@pytest.mark.parametrize("model_fixture", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("site", ["resid_post", "resid_pre"])
def test_hook_edits_only_the_clamped_row_in_a_real_model(request, model_fixture, site):
    model = request.getfixturevalue(model_fixture)
    sae = make_sae(layer=1, hook_site=site)
    ids = torch.randint(3, 250, (3, 7), generator=torch.Generator().manual_seed(9))
    spec = SteeringSpec((FeatureClamp(0, 20.0), FeatureClamp(1, 20.0)))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with steering(model, sae, build_plan(sae, [None, spec, None])):
            steered = model(input_ids=ids).logits
        alone_plan = build_plan(sae, [spec])
        with steering(model, sae, alone_plan):
            alone = model(input_ids=ids[1:2]).logits
    assert torch.equal(steered[0], plain[0]) and torch.equal(steered[2], plain[2])
    assert not torch.allclose(steered[1], plain[1], atol=1e-3)
    torch.testing.assert_close(steered[1], alone[0], atol=1e-5, rtol=1e-5)


def test_hooks_are_removed_even_when_the_forward_fails(tiny_llama):
    sae = make_sae(layer=1)
    block = tiny_llama.model.layers[1]
    with pytest.raises(RuntimeError):
        with steering(tiny_llama, sae, build_plan(sae, [SteeringSpec((FeatureClamp(0, 1.0),))])):
            assert len(block._forward_hooks) == 1
            raise RuntimeError("boom")
    assert len(block._forward_hooks) == 0


def test_capture_stops_the_forward_at_the_site(tiny_llama):
    ids = torch.randint(3, 250, (2, 5), generator=torch.Generator().manual_seed(10))
    calls = []
    handle = tiny_llama.model.layers[3].register_forward_hook(lambda *a: calls.append(1))
    try:
        with capture(tiny_llama, 1, "resid_post", stop=True) as store:
            run_until_capture(tiny_llama, input_ids=ids)
    finally:
        handle.remove()
    assert len(store) == 1 and store[0].shape == (2, 5, 64) and calls == []
    with torch.no_grad():
        hidden = tiny_llama(input_ids=ids, output_hidden_states=True).hidden_states[2]
    torch.testing.assert_close(store[0], hidden)
