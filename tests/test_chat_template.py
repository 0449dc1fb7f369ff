"""Tests for steering.chat_template: chat template rendering and the no-template fallback."""

from __future__ import annotations

import pytest
from tokenizers.processors import TemplateProcessing

from steering.chat_template import ChatFormatError, chat_text, render_chat

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi! Où est le pont? 🌉"},
    {"role": "assistant", "content": "Here."},
    {"role": "user", "content": "Thanks"},
]


def test_chatml_template(tiny_tokenizer):
    text = chat_text(tiny_tokenizer, MESSAGES)
    assert text == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi! Où est le pont? 🌉<|im_end|>\n"
        "<|im_start|>assistant\nHere.<|im_end|>\n"
        "<|im_start|>user\nThanks<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = render_chat(tiny_tokenizer, MESSAGES)
    assert ids == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(1) == 5 and ids.count(2) == 4  # <|im_start|>, <|im_end|> are single tokens
    assert tiny_tokenizer.decode(ids) == text


def test_without_generation_prompt(tiny_tokenizer):
    with_prompt = render_chat(tiny_tokenizer, MESSAGES)
    without = render_chat(tiny_tokenizer, MESSAGES, add_generation_prompt=False)
    assert with_prompt[: len(without)] == without
    assert tiny_tokenizer.decode(with_prompt[len(without):]) == "<|im_start|>assistant\n"


def test_template_adds_no_extra_special_tokens(tiny_tokenizer):
    # A tokenizer that prepends <|endoftext|> to plain text (like a BOS):
    # the template path must not add it, the fallback path must.
    tiny_tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)]
    )
    assert tiny_tokenizer("x")["input_ids"][0] == 0
    assert render_chat(tiny_tokenizer, MESSAGES)[0] == 1
    tiny_tokenizer.chat_template = None
    assert render_chat(tiny_tokenizer, MESSAGES)[0] == 0


def test_fallback_without_template(tiny_tokenizer):
    tiny_tokenizer.chat_template = None
    text = chat_text(tiny_tokenizer, MESSAGES[:2])
    assert text == "system: You are terse.\nuser: Hi! Où est le pont? 🌉\nassistant:"
    assert chat_text(tiny_tokenizer, MESSAGES[:2], add_generation_prompt=False) == text.removesuffix("assistant:")
    ids = render_chat(tiny_tokenizer, MESSAGES[:2])
    assert tiny_tokenizer.decode(ids) == text


@pytest.mark.parametrize(
    "messages, param",
    [
        ([], "messages"),
        ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], "messages[1].role"),
        ([{"content": "a"}], "messages[0].role"),
        ([{"role": "user", "content": None}], "messages[0].content"),
    ],
)
def test_bad_messages_name_the_parameter(tiny_tokenizer, messages, param):
    with pytest.raises(ChatFormatError) as info:
        render_chat(tiny_tokenizer, messages)
    assert info.value.param == param
    assert isinstance(info.value, ValueError)
