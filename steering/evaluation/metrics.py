"""Text metrics for steering evaluation: concept words and repetition.

Pure functions of strings; nothing here knows of models or SAEs.

Concept words (`concept_word_pattern`, `has_concept_words`). A concept word
matches as a whole word, case-insensitively, in its given form or a simple
plural: w, w+"s", w+"es", and for w ending in consonant+"y" also w[:-1]+"ies".
"Whole word" means no letter, digit or underscore on either side, so "cat"
matches "Cat," "cats" and "cat's" but not "category" or "concatenate".
A phrase ("golden gate") matches with any whitespace between its words and
takes the plural on its last word. Nothing more clever (no stemming, no
singular of a plural word): list the forms you mean.

Repetition (`text_units`, `repeated_ngram_share`). The answer is split into
units: lowercased words (runs of letters, digits, apostrophes) and single
punctuation marks, so "Europe, Europe, Europe" and "!!!!" repeat too. With
units u_0..u_{n-1} and 4-grams g_j = (u_j, ..., u_{j+3}) for j = 0..n-4,

    repeated_4gram_share = #{j : g_j in {g_0, ..., g_{j-1}}} / (n - 3)

i.e. the share of the answer's 4-grams that repeat an earlier 4-gram of the
same answer (0 when the answer has fewer than 4 units). Units are words, not
model tokens, so the figure does not depend on the tokenizer.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

_UNIT = re.compile(r"[\w']+|[^\w\s]")


def text_units(text: str) -> list[str]:
    """Lowercased words and single punctuation marks of `text`."""
    return [u.lower() for u in _UNIT.findall(text)]


def repeated_ngram_share(text: str, n: int = 4) -> float:
    """Share of the n-grams of `text`'s units that repeat an earlier one (module docstring)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    units = text_units(text)
    total = len(units) - n + 1
    if total <= 0:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeated = 0
    for j in range(total):
        gram = tuple(units[j : j + n])
        if gram in seen:
            repeated += 1
        seen.add(gram)
    return repeated / total


def _word_forms(word: str) -> str:
    """Regex alternation of one concept word and its simple plurals."""
    parts = word.strip().split()
    if not parts:
        raise ValueError("a concept word must not be empty")
    head = r"\s+".join(re.escape(p) for p in parts[:-1])
    last = parts[-1]
    forms = [re.escape(last) + "(?:e?s)?"]
    if len(last) > 1 and last[-1].lower() == "y" and last[-2].lower() not in "aeiou":
        forms.append(re.escape(last[:-1]) + "ies")
    body = "(?:" + "|".join(forms) + ")"
    return (head + r"\s+" + body) if head else body


def concept_word_pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    """One case-insensitive pattern matching any of the words (None for no words)."""
    alternatives = [_word_forms(w) for w in words if w.strip()]
    if not alternatives:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


def concept_words_found(text: str, words: Sequence[str] | re.Pattern[str] | None) -> list[str]:
    """The concept-word matches in `text`, in order (as they appear in the text)."""
    pattern = words if isinstance(words, re.Pattern) or words is None else concept_word_pattern(words)
    if pattern is None:
        return []
    return [m.group(0) for m in pattern.finditer(text)]


def has_concept_words(text: str, words: Sequence[str] | re.Pattern[str] | None) -> bool:
    """True when any concept word (or a simple plural of it) occurs in `text` as a whole word."""
    return bool(concept_words_found(text, words))


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not None or NaN; None when there are none."""
    kept = [float(v) for v in values if v is not None and v == v]
    return sum(kept) / len(kept) if kept else None


def rate(flags: Iterable[bool | None]) -> float | None:
    """Share of True among the flags that are not None; None when all are None."""
    kept = [bool(f) for f in flags if f is not None]
    return sum(kept) / len(kept) if kept else None
