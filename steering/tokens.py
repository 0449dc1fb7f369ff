"""The bytes of each token: what a token id contributes to the UTF-8 text.

Byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM2, Qwen) write a token's
bytes as printable characters of GPT-2's byte alphabet; a token may hold
part of a character, so its decoded text shows U+FFFD where its bytes are
exact. For such a token the bytes come from its piece through the reversed
alphabet; for any other tokenizer (SentencePiece, WordPiece) they are the
UTF-8 of its decoded text. The rule, per token id:

    piece's bytes  when every character of the piece is in the alphabet and
                   those bytes decode to the token's text, or its text has U+FFFD
    text's bytes   otherwise (a "##ing" WordPiece piece is all printable, yet not its bytes)

Used for OpenAI's `logprobs[].bytes` and for the catalogue's stored byte
table. This module knows nothing of models or HTTP.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: printable character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


BYTE_ALPHABET: dict[str, int] = _byte_alphabet()


def token_text_and_bytes(tokenizer: Any, token_id: int) -> tuple[str, bytes]:
    """(decoded text, bytes) of one token id (module docstring)."""
    text = tokenizer.decode([token_id])
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if isinstance(piece, str) and piece and all(ch in BYTE_ALPHABET for ch in piece):
        raw = bytes(BYTE_ALPHABET[ch] for ch in piece)
        if "\ufffd" in text or raw.decode("utf-8", errors="replace") == text:
            return text, raw
    return text, text.encode("utf-8")


def vocabulary_bytes(tokenizer: Any) -> list[bytes]:
    """The bytes of every token id 0..len(tokenizer)-1."""
    return [token_text_and_bytes(tokenizer, i)[1] for i in range(len(tokenizer))]


def sink_token_id(tokenizer: Any) -> int:
    """The token put at position 0 of a plain text that is read (an attention sink whose norms are orders of
    magnitude above the others': never read itself, so that every token of the text is)."""
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return int(tid)
    return 0


class TokenTexts:
    """Token id -> (text, bytes), cached per id (one tokenizer, read-only)."""

    def __init__(self, tokenizer: Any, cache: int = 65536):
        self.tokenizer = tokenizer
        self.lookup = lru_cache(maxsize=cache)(lambda token_id: token_text_and_bytes(self.tokenizer, token_id))
