"""Public SAE layouts end to end: from the Hugging Face cache, through `--sae`, into a steered chat.

Each SAE is written in the test with its real files' names, shapes and dtypes
(Gemma Scope's params.npz, a SAELens repository's hook folder, sparsify's
hookpoint folders), inside a Hugging Face cache laid out as a download leaves
it, and attached to a tiny random model of the family it is made for. None
ships feature statistics, so the server estimates the `max` unit once and
says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from steering.evaluation.random_models import byte_tokenizer, random_model
from steering.feature_stats import STATS_CACHE_FILE, ensure_max_activations
from steering.sae.formats import load_sae
from steering.sae.hub import SAENotCachedError, resolve_sae_path
from tests.servers import start_api

D_SAE = 128
REVISION = "0123456789abcdef0123456789abcdef01234567"


def cached_folder(hub: Path, repo: str, inside: str) -> Path:
    """The folder `inside` of repo's snapshot of main in a Hugging Face cache rooted at hub."""
    root = hub / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REVISION)
    folder = root / "snapshots" / REVISION / inside
    folder.mkdir(parents=True, exist_ok=True)
    return folder


SILENT = 0  # a feature whose bias keeps it off on every token


def _encoder(d_in: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae]): tied unit-norm directions, SILENT off."""
    gen = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(D_SAE, d_in, generator=gen)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    b_enc = torch.zeros(D_SAE)
    b_enc[SILENT] = -1e3
    return w_dec.T.contiguous() * 0.5, w_dec, b_enc


def gemma_scope(hub: Path, d_in: int, layer: int) -> str:
    repo, inside = "google/gemma-scope-2b-pt-res", f"layer_{layer}/width_16k/average_l0_71"
    w_enc, w_dec, b_enc = _encoder(d_in, 1)
    np.savez(cached_folder(hub, repo, inside) / "params.npz", W_enc=w_enc.numpy(), W_dec=w_dec.numpy(),
             b_enc=b_enc.numpy(), b_dec=np.zeros(d_in, np.float32),
             threshold=np.full(D_SAE, 0.05, np.float32))
    return f"{repo}/{inside}"


def saelens(hub: Path, d_in: int, layer: int) -> str:
    repo, inside = "jbloom/GPT2-Small-SAEs-Reformatted", f"blocks.{layer}.hook_resid_pre"
    folder = cached_folder(hub, repo, inside)
    w_enc, w_dec, b_enc = _encoder(d_in, 2)
    save_file({"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": torch.zeros(d_in)},
              folder / "sae_weights.safetensors")
    save_file({"sparsity": torch.full((D_SAE,), -2.0)}, folder / "sparsity.safetensors")
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": d_in, "d_sae": D_SAE, "dtype": "torch.float32", "device": "cpu",
        "model_name": "gpt2-small", "hook_name": f"blocks.{layer}.hook_resid_pre", "hook_layer": layer,
        "hook_head_index": None, "activation_fn_str": "relu", "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False, "context_size": 128, "dataset_path": "Skylion007/openwebtext",
        "prepend_bos": True, "normalize_activations": "none"}))
    return f"{repo}/{inside}"


def sparsify(hub: Path, d_in: int, layer: int) -> str:
    repo = "EleutherAI/sae-tiny-qwen2-2x"
    w_enc, w_dec, b_enc = _encoder(d_in, 3)
    for hookpoint in (f"layers.{layer}", f"layers.{layer + 1}"):
        folder = cached_folder(hub, repo, hookpoint)
        save_file({"encoder.weight": w_enc.T.contiguous().bfloat16(), "encoder.bias": b_enc.bfloat16(),
                   "W_dec": w_dec.bfloat16(), "b_dec": torch.zeros(d_in).bfloat16()}, folder / "sae.safetensors")
        (folder / "cfg.json").write_text(json.dumps({"expansion_factor": D_SAE // d_in, "normalize_decoder": True,
                                                     "num_latents": D_SAE, "k": 8, "multi_topk": False,
                                                     "d_in": d_in}))
    return f"{repo}/layers.{layer}"


LAYOUTS = {"gemma_scope": ("gemma2", gemma_scope), "saelens": ("gpt2", saelens), "sparsify": ("qwen2", sparsify)}


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "hf-hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(root))
    return root


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_cached_public_sae_loads_and_gets_estimated_max_units_once(layout, hub, tmp_path):
    arch, write = LAYOUTS[layout]
    tok = byte_tokenizer()
    model = random_model(arch, vocab_size=len(tok))
    name = write(hub, 64, 2)
    folder = resolve_sae_path(name)
    assert folder.is_dir() and str(folder).startswith(str(hub))
    sae = load_sae(folder)
    assert sae.cfg.hook_layer == 2 and sae.d_sae == D_SAE and not torch.isfinite(sae.max_activation).any()
    first = ensure_max_activations(model, tok, sae, folder, "tiny")
    assert first is not None and not first.reused and first.tokens > 1000 and 0 < first.fired < D_SAE
    assert torch.isnan(sae.max_activation[SILENT]) and (sae.max_activation.nan_to_num(0) >= 0).all()
    assert first.path == folder / STATS_CACHE_FILE
    measured = sae.max_activation.clone()
    again = load_sae(folder)
    second = ensure_max_activations(model, tok, again, folder, "tiny")
    assert second is not None and second.reused and second.tokens == first.tokens
    torch.testing.assert_close(again.max_activation, measured, equal_nan=True)
    with safe_open(str(first.path), framework="pt") as f:
        assert f.metadata()["model"] == "tiny"
    remeasured = load_sae(folder)  # another model's cache entry is not reused
    assert not ensure_max_activations(model, tok, remeasured, folder, "other-model").reused
    if layout == "saelens":  # the release's own firing frequencies (10^-2) are kept
        torch.testing.assert_close(sae.firing_frequency, torch.full((D_SAE,), 0.01))


def test_a_repository_missing_from_the_cache_says_how_to_fetch_it(hub):
    with pytest.raises(SAENotCachedError, match="huggingface-cli download google/gemma-scope-2b-pt-res"):
        resolve_sae_path("google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_server_steers_through_a_cached_public_sae(layout, hub, tmp_path):
    from openai import BadRequestError, OpenAI

    arch, write = LAYOUTS[layout]
    tok = byte_tokenizer()
    model_dir = tmp_path / f"tiny-{arch}"
    random_model(arch, vocab_size=len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    name = write(hub, 64, 2)
    with open(tmp_path / "server.log", "w+") as log:
        proc, url = start_api(["--model", str(model_dir), "--sae", name], log)
        try:
            client = OpenAI(base_url=f"{url}/v1", api_key="unused")
            card = client.models.list().data[0].model_extra
            assert card["sae"]["hook_layer"] == 2 and "estimated" in card["sae"]["max_unit"]
            stats = resolve_sae_path(name) / STATS_CACHE_FILE
            with safe_open(str(stats), framework="pt") as f:
                peak = f.get_tensor("max_activation")
            feature = int(peak.nan_to_num(-1).argmax())
            ask = dict(model=f"tiny-{arch}", messages=[{"role": "user", "content": "Tell me about the sea."}],
                       max_tokens=12, temperature=0, seed=0)
            plain = client.chat.completions.create(**ask)
            steered = client.chat.completions.create(
                **ask, extra_body={"steering": {"features": [{"index": feature, "value": 20.0}]}})
            assert steered.model_extra["steering"]["max_unit"].startswith("estimated by this server")
            assert steered.choices[0].message.content != plain.choices[0].message.content
            # A feature that never fired on the sample has no max: refused, the parameter named.
            with pytest.raises(BadRequestError, match="no known max activation") as refused:
                client.chat.completions.create(
                    **ask, extra_body={"steering": {"features": [{"index": SILENT, "value": 5.0}]}})
            assert refused.value.body["param"] == "steering.features[0].unit"
        finally:
            proc.terminate()
            proc.wait(timeout=30)
