"""Incremental detokenization with stop strings, one sequence at a time.

Tokens do not map one-to-one onto characters: a character may span several
byte-level tokens, and a tokenizer may change how a token's text looks once
the next one arrives. `TextStream` decodes a small window of recent tokens
(the prefix/read offsets used by TGI and vLLM) and releases text only in whole
UTF-8 characters (never a trailing U+FFFD from a half-decoded character;
bytes that cannot become a character within `MAX_PENDING_TOKENS` tokens are
invalid and released as U+FFFD, so the window stays small).

Stop strings: released text never contains any part of a stop string. Text
that could still grow into a stop string is held back until it cannot; when
a stop string appears, the text before it is released and the stream ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

REPLACEMENT = "\ufffd"
# A UTF-8 character is at most 4 bytes and a byte-level token carries at least one: text still ending in a
# half character after this many more tokens is invalid, not incomplete, and is released as it decodes
# (U+FFFD included) instead of being re-decoded from a window that would grow with every token.
MAX_PENDING_TOKENS = 4


@dataclass
class TextStream:
    """Turns a growing list of token ids into text deltas."""

    tokenizer: object
    stop: tuple[str, ...] = ()
    token_ids: list[int] = field(default_factory=list)
    prefix_offset: int = 0
    read_offset: int = 0
    pending: str = ""  # decoded but not yet released (may start a stop string)
    text: str = ""  # everything released so far
    stopped: bool = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)  # type: ignore[attr-defined]

    def push(self, token_id: int) -> str:
        """Add one token; return the newly released text ("" while held back)."""
        if self.stopped:
            return ""
        self.token_ids.append(token_id)
        prefix = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.token_ids[self.prefix_offset :])
        stuck = len(self.token_ids) - self.read_offset > MAX_PENDING_TOKENS
        if len(full) > len(prefix) and (not full.endswith(REPLACEMENT) or stuck):
            self.pending += full[len(prefix) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.token_ids)
        return self._release(final=False)

    def flush(self) -> str:
        """Release whatever is held back (end of generation)."""
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        for s in self.stop:
            at = self.pending.find(s)
            if at >= 0:
                out, self.pending, self.stopped = self.pending[:at], "", True
                self.text += out
                return out
        keep = 0 if final else _held_back(self.pending, self.stop)
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        self.text += out
        return out


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
