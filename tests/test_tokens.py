"""The bytes of each token (steering.tokens): byte-level pieces exactly, other tokenizers by their text."""

from __future__ import annotations

from steering.tokens import TokenTexts, token_text_and_bytes, vocabulary_bytes


def test_token_bytes_roundtrip(tiny_tokenizer):
    vocab = vocabulary_bytes(tiny_tokenizer)
    ids = tiny_tokenizer("héllo <|im_end|>", add_special_tokens=False)["input_ids"]
    assert b"".join(vocab[i] for i in ids).decode() == "héllo <|im_end|>"


def test_part_of_a_character_keeps_its_own_bytes(tiny_tokenizer):
    (first, second) = tiny_tokenizer("é", add_special_tokens=False)["input_ids"]  # two byte tokens
    text, raw = token_text_and_bytes(tiny_tokenizer, first)
    assert text == "\ufffd" and raw == "é".encode()[:1]
    assert TokenTexts(tiny_tokenizer).lookup(second) == token_text_and_bytes(tiny_tokenizer, second)


class _WordPiece:
    """A tokenizer whose pieces are printable but not bytes ("##ing" is the text "ing")."""

    def decode(self, ids):
        return "ing"

    def convert_ids_to_tokens(self, token_id):
        return "##ing"


def test_a_piece_that_is_not_its_bytes_falls_back_to_the_text():
    assert token_text_and_bytes(_WordPiece(), 0) == ("ing", b"ing")
