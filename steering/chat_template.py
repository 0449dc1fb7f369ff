"""Turn a list of chat messages into the prompt a model was trained on.

Messages are `{"role": "system" | "user" | "assistant", "content": str}`.
A tokenizer with a chat template renders them through it, exactly as the
model's authors wrote it: SmolLM2's ChatML template, for one, inserts its own
default system prompt when the messages have none, and that is kept.

A tokenizer without a chat template (a base model, a tiny test tokenizer)
gets a plain fallback, one line per message and an open assistant line:

    system: You are terse.
    user: Hi!
    assistant:

which is tokenised with the tokenizer's usual special tokens (e.g. a BOS).
A template already contains its own special tokens, so its text is tokenised
without adding any.

This module knows nothing of models, generation or HTTP.
"""

from __future__ import annotations

from typing import Any, Sequence

from steering.errors import ParameterError

ROLES: tuple[str, ...] = ("system", "user", "assistant")


class ChatFormatError(ParameterError):
    """A malformed message; `param` names it (e.g. `messages[1].role`)."""


def _check(messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    if not messages:
        raise ChatFormatError("messages must not be empty", "messages")
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            raise ChatFormatError(
                f"unknown role {m.get('role')!r} in message {i}; valid: {', '.join(ROLES)}", f"messages[{i}].role"
            )
        if not isinstance(m.get("content"), str):
            raise ChatFormatError(f"message {i} needs a string content", f"messages[{i}].content")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_text(tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The prompt as text: the tokenizer's chat template, else the fallback format."""
    msgs = _check(messages)
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
    text = "".join(f"{m['role']}: {m['content']}\n" for m in msgs)
    return text + "assistant:" if add_generation_prompt else text


def render_chat(tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
    """The prompt's token ids, ready for `generate`.

    With add_generation_prompt the prompt ends where the assistant's reply starts.
    """
    text = chat_text(tokenizer, messages, add_generation_prompt)
    return list(tokenizer(text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"])
