"""Shared fixtures: a tiny byte-level tokenizer and tiny random models built from configs.

Nothing here downloads or reads model files. Build order and sizes:

    tiny_tokenizer   (`steering.evaluation.random_models.byte_tokenizer`) byte-level, no merges: every byte is one token, so any text
                     round-trips exactly. Ids 0-2 are the special tokens
                     <|endoftext|>, <|im_start|>, <|im_end|> (as in SmolLM2, so
                     eos = pad = 2), ids 3-258 the bytes 0-255. No BOS.
                     A ChatML chat template without a default system prompt.
    tiny_llama       LlamaForCausalLM: hidden 64, 4 layers, 4 heads / 2 KV heads,
                     vocab = len(tiny_tokenizer) (259), tied embeddings, seed 0.
    tiny_gpt2        GPT2LMHeadModel: n_embd 64, 4 layers, 4 heads, same vocab, seed 0.
    tiny_model_dir   tiny_llama + tiny_tokenizer saved with save_pretrained, for
                     anything that loads from disk (steering.models.load_model).

Models are float32, in eval mode, with gradients off (as load_model returns
them), and rebuilt for each test, so a test may change them freely.
Seeding forks the RNG, so fixtures leave the global torch seed alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from steering.evaluation.random_models import byte_tokenizer


def _seeded(build, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    model.eval()
    model.requires_grad_(False)
    return model


@pytest.fixture
def tiny_tokenizer():
    """Byte-level tokenizer, 259 ids, eos = pad = 2, ChatML chat template."""
    return byte_tokenizer()


@pytest.fixture
def tiny_llama(tiny_tokenizer):
    """A seeded random LlamaForCausalLM (hidden 64, 4 layers, 4 heads, 2 KV heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    return _seeded(lambda: LlamaForCausalLM(cfg))


@pytest.fixture
def tiny_gpt2(tiny_tokenizer):
    """A seeded random GPT2LMHeadModel (n_embd 64, 4 layers, 4 heads)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=len(tiny_tokenizer),
        n_embd=64,
        n_layer=4,
        n_head=4,
        n_positions=256,
        bos_token_id=tiny_tokenizer.eos_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    return _seeded(lambda: GPT2LMHeadModel(cfg))


@pytest.fixture
def tiny_model_dir(tmp_path: Path, tiny_llama, tiny_tokenizer) -> Path:
    """tiny_llama and tiny_tokenizer saved to `tmp_path/tiny-llama` (safetensors)."""
    out = tmp_path / "tiny-llama"
    tiny_llama.save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out
