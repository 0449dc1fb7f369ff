"""Causal LMs with random weights, built from configs (no download): for tests and benchmarks.

`ARCHITECTURES` names the families the batched Hugging Face path is tested
on. `random_model(arch, "tiny")` is a 4-layer, 64-wide model of that family
(with a 6-token sliding window where the family has one, so that short
prompts cross it); `random_model(arch, "real")` has a published model's shape
(Gemma-2-2B, Llama-3.2-1B, GPT-2 small, Qwen2.5-0.5B...) for GPU benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import nn


@dataclass(frozen=True)
class Architecture:
    config: str  # transformers config class
    model: str  # transformers causal-LM class
    tiny: dict[str, Any]  # config overrides for the tiny model
    real: dict[str, Any]  # a published model's shape


_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)

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
    "gpt2": Architecture("GPT2Config", "GPT2LMHeadModel", dict(n_embd=64, n_layer=4, n_head=4, n_positions=256),
                         dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257)),  # GPT-2 small
}


def random_config(arch: str, size: str = "tiny", vocab_size: int | None = None, eos_id: int = 2) -> Any:
    """The config of a random `arch` model of `size` ("tiny" or "real"); `vocab_size` overrides."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
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
