"""Causal LMs with random weights, built from configs (no download): for tests and benchmarks.

`ARCHITECTURES` names the families the batched Hugging Face path is tested
on. `random_model(arch, "tiny")` is a 4-layer, 64-wide model of that family
(with a 6-token sliding window where the family has one, so that short
prompts cross it); `random_model(arch, "real")` has a published model's shape
(Gemma-2-2B, Llama-3.2-1B, GPT-2 small, Qwen2.5-0.5B...) for GPU benchmarks.
`byte_tokenizer()` is a tokenizer for any of them (259 ids, ChatML template).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import transformers
from torch import nn

from steering.errors import ParameterError

if TYPE_CHECKING:
    from steering.steered_model import SteeredModel


@dataclass(frozen=True)
class Architecture:
    config: str  # transformers config class
    model: str  # transformers causal-LM class
    tiny: dict[str, Any]  # config overrides for the tiny model
    real: dict[str, Any]  # a published model's shape


_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=1024)

ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("LlamaConfig", "LlamaForCausalLM", dict(_TINY), dict(  # Llama-3.2-1B
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192)),
    "gemma2": Architecture("Gemma2Config", "Gemma2ForCausalLM", dict(  # soft-capping, alternating sliding window
        _TINY, head_dim=16, sliding_window=6, query_pre_attn_scalar=16, attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0), dict(  # Gemma-2-2B
        hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, vocab_size=256000, sliding_window=4096, query_pre_attn_scalar=256,
        max_position_embeddings=8192)),
    "gemma3": Architecture("Gemma3TextConfig", "Gemma3ForCausalLM", dict(_TINY, head_dim=16, sliding_window=6),
                           dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,  # Gemma-3-1B
                                num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262144,
                                sliding_window=512, max_position_embeddings=32768)),
    "qwen2": Architecture("Qwen2Config", "Qwen2ForCausalLM", dict(  # sliding window on the upper half
        _TINY, use_sliding_window=True, sliding_window=6, max_window_layers=2), dict(  # Qwen2.5-0.5B
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768)),
    "qwen3": Architecture("Qwen3Config", "Qwen3ForCausalLM", dict(_TINY, head_dim=16), dict(  # Qwen3-0.6B
        hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=32768)),
    "mistral": Architecture("MistralConfig", "MistralForCausalLM", dict(_TINY, sliding_window=6), dict(  # Mistral-7B
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=32768, sliding_window=None, max_position_embeddings=32768)),
    "phi3": Architecture("Phi3Config", "Phi3ForCausalLM", dict(_TINY, sliding_window=6), dict(  # Phi-3-mini
        hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32064, sliding_window=2047, max_position_embeddings=4096)),
    "gpt2": Architecture("GPT2Config", "GPT2LMHeadModel", dict(n_embd=64, n_layer=4, n_head=4, n_positions=1024),
                         dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257)),  # GPT-2 small
}


def random_config(arch: str, size: str = "tiny", vocab_size: int | None = None, eos_id: int = 2) -> Any:
    """The config of a random `arch` model of `size` ("tiny" or "real"); `vocab_size` overrides."""
    if arch not in ARCHITECTURES:
        raise ParameterError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}", "random")
    if size not in ("tiny", "real"):
        raise ParameterError(f"unknown size {size!r}; valid: tiny, real", "random")
    a = ARCHITECTURES[arch]
    fields = dict(a.tiny if size == "tiny" else a.real)
    if vocab_size is not None:
        fields["vocab_size"] = vocab_size
    fields.setdefault("vocab_size", 259)
    fields.update(eos_token_id=eos_id, pad_token_id=eos_id, bos_token_id=None if arch != "gpt2" else eos_id)
    return getattr(transformers, a.config)(**fields)


def random_model(arch: str, size: str = "tiny", vocab_size: int | None = None, seed: int = 0,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> nn.Module:
    """A seeded random causal LM of `arch` (see the module docstring), in eval mode; the global RNG is left alone."""
    cfg = random_config(arch, size, vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = getattr(transformers, ARCHITECTURES[arch].model)(cfg)
    return model.to(dtype).eval().requires_grad_(False)


SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (the ByteLevel alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def byte_tokenizer() -> Any:
    """Byte-level, no merges: every byte is one token, so any text round-trips exactly. Ids 0-2 are
    <|endoftext|>, <|im_start|>, <|im_end|> (as in SmolLM2: eos = pad = 2), ids 3-258 the bytes 0-255; no BOS;
    a ChatML chat template without a default system prompt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for b, ch in _byte_to_unicode().items():
        vocab[ch] = len(SPECIAL_TOKENS) + b
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
        model_max_length=256,
    )


def random_steered_model(arch: str, size: str = "tiny", d_sae: int | None = None, device: str = "auto",
                         dtype: str = "auto", seed: int = 0) -> "SteeredModel":
    """A random `arch` model of `size` with the byte tokenizer and a random JumpReLU SAE at the middle layer's
    resid_post (`d_sae` features: 16,384 for "real", 1,024 for "tiny"; thresholds such that each fires on ~2% of
    the package's sample text), its max activations measured on that text: what `python -m steering bench --random` measures where no real weights exist."""
    from steering.hooks import activations_at
    from steering.models import LoadedModel, resolve_device, resolve_dtype
    from steering.sae.autoencoder import SAEConfig, SparseAutoencoder
    from steering.feature_stats import measure_stats, sample_texts
    from steering.steered_model import SteeredModel

    where = resolve_device(device)
    precision = resolve_dtype(dtype, where)
    tokenizer = byte_tokenizer()
    model = random_model(arch, size, vocab_size=None if size == "real" else len(tokenizer), seed=seed,
                         dtype=precision, device=where)
    cfg = model.config
    layers = int(getattr(cfg, "num_hidden_layers", None) or cfg.n_layer)
    hidden = int(getattr(cfg, "hidden_size", None) or cfg.n_embd)
    sae_cfg = SAEConfig(d_in=hidden, d_sae=d_sae or (16384 if size == "real" else 1024), architecture="jumprelu",
                        hook_layer=layers // 2, hook_site="resid_post", model_name=f"random-{arch}-{size}")
    sae = SparseAutoencoder.random(sae_cfg, seed=seed).to(where, precision).requires_grad_(False)
    texts = sample_texts()
    rows = [tokenizer(t)["input_ids"][:256] for t in texts[:64]]
    with torch.inference_mode():
        sites = torch.cat([acts[1:] for _, acts in activations_at(model, sae_cfg.hook_layer, "resid_post", rows)])
        pre = sae.pre_activations(sae.normalize(sites.to(precision))[0]).float()
        # Thresholds at each feature's 98th percentile on the sample: ~2% of tokens fire each feature.
        sae.threshold.copy_(pre.quantile(0.98, dim=0).clamp(min=1e-6).to(sae.threshold))
    max_activation, frequency, _ = measure_stats(model, tokenizer, sae, texts, max_tokens=2048)
    sae.set_feature_stats(max_activation.to(where), frequency.to(where))
    loaded = LoadedModel(model=model, tokenizer=tokenizer, model_id=f"random-{arch}-{size}", device=where,
                         dtype=precision, path=None)
    return SteeredModel(loaded, sae, f"random-jumprelu-{sae_cfg.d_sae}",
                        "random weights: a speed benchmark only, features mean nothing")
