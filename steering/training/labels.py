"""Feature labels a person can read: what a feature's top contexts share, not only the token it peaks on.

Inputs are a catalogue's arrays: for feature i its top contexts (token
windows with the peak at index `before`, activations a_k), its top promoted
tokens and its decoder neighbours. Per context, `words` are the lower-cased
alphabetic words of the window's text around the peak (stopwords and words
under 3 letters dropped); the peak word is the word holding the peak token,
and counts toward w too unless it is the feature's dominant peak word (a
token detector's token is not a topic unless the text around it is about it
as well). Then

    share_i(w)    = sum_k a_k [w in words(c_k)] / sum_k a_k     (activation-weighted)
    background(w) = share of all contexts of all features holding w  (the catalogue's
                    contexts are the corpus sample: no corpus needed)
    lift_i(w)     = share_i(w) / background(w)
    score_i(w)    = share_i(w) * log lift_i(w)                   (common here, rare elsewhere)

and a feature's label is one of three kinds:

    concept   up to 3 words with share >= MIN_SHARE and lift >= MIN_LIFT, best score first
              (a promoted token that is such a word counts twice as much), e.g.
              "dogs, puppy, breed"; the dominant peak word, when there is one and it
              is not among them, follows as a detail: "dogs, puppy · at 'the'"
    token     no such words, but one peak word (or peak token) in >= PEAK_SHARE of the weighted
              contexts: 'token "of"' (with the next peak words holding >= 10%: 'token "northwest"
              (east, eastern)'), with the top promoted token when it starts a word the contexts
              hold too: 'token "dog" -> puppy'; or one word family (peak words sharing their first 5 letters):
              'word "commi…" (committed, commit, commitment)'
    unclear   neither: "unclear", or "unclear (neighbours: X)" when at least 3 of its 10
              decoder neighbours have concept labels naming the same word X

This module needs numpy only.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MIN_SHARE = 0.3
MIN_LIFT = 4.0
PEAK_SHARE = 0.5
KINDS = ("concept", "token", "unclear")
_WORD = re.compile(r"[a-z][a-z']+[a-z]|[a-z]{3,}")
_SPECIAL = re.compile(r"<\|[^|<>]{1,40}\|>")
STEM = 5  # peak words sharing their first STEM letters are one word family (commit, committed, commitment)
STOPWORDS = frozenset("""
a about above after again against all also am an and any are aren't as at be because been before being below
between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each few
for from further had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers herself him
himself his how how's i i'd i'll i'm i've if in into is isn't it it's its itself let's me more most mustn't my
myself no nor not of off on once only or other ought our ours ourselves out over own same shan't she she'd she'll
she's should shouldn't so some such than that that's the their theirs them themselves then there there's these
they they'd they'll they're they've this those through to too under until up very was wasn't we we'd we'll we're
we've were weren't what what's when when's where where's which while who who's whom why why's will with won't
would wouldn't you you'd you'll you're you've your yours yourself yourselves one two also just like get got make
made may might much many well even still yet use used using way ways new first last would could said says say
user assistant system im_start im_end endoftext
""".split())


@dataclass(frozen=True)
class Label:
    text: str
    kind: str  # concept | token | unclear
    words: tuple[str, ...] = ()  # the concept words (concept labels)


def words_of(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in STOPWORDS}


def token_name(piece: str) -> str:
    """A peak token as a label names it: lower-cased and stripped, whitespace by name."""
    stripped = piece.strip().lower()
    if stripped:
        return stripped
    return {"\n": "newline", " ": "space", "\t": "tab"}.get(piece, "newlines" if "\n" in piece else "spaces")


def _window(tokens: Sequence[int], texts: Sequence[str], before: int) -> tuple[set[str], str, str]:
    """(words of the window around the peak word, the peak word or the stripped peak token, the peak token's
    name) for one context."""
    pieces, peak_span, at, peak_token = [], (0, 0), 0, ""
    for k, t in enumerate(tokens):
        if t < 0 or t >= len(texts):
            continue
        piece = texts[t]
        if k == before:
            peak_span, peak_token = (at, at + len(piece)), token_name(piece)
        pieces.append(piece)
        at += len(piece)
    # Special tokens (<|im_start|> ...) are markup, not words: blanked to the same length (spans stay put).
    text = _SPECIAL.sub(lambda m: " " * len(m.group()), "".join(pieces))
    peak, around = text[peak_span[0] : peak_span[1]].strip().lower(), text
    for m in re.finditer(r"[A-Za-z']+", text):  # the word holding the peak token's first letter
        if m.start() < peak_span[1] and m.end() > peak_span[0]:
            peak, around = m.group().lower(), text[: m.start()] + " " + text[m.end() :]
            break
    return words_of(around), peak, peak_token


def make_labels(context_tokens: np.ndarray, context_activation: np.ndarray, promoted_ids: np.ndarray,
                neighbour_ids: np.ndarray, token_texts: Sequence[str], before: int) -> list[Label]:
    """One Label per feature (see the module docstring). context_tokens [S, C, W] (ids >= len(token_texts)
    or < 0 are padding), context_activation [S, C] (0: no context), promoted_ids [S, P], neighbour_ids [S, N]."""
    S = context_tokens.shape[0]
    acts = context_activation.astype(np.float64)
    # _window skips padding ids (< 0 or past the vocabulary).
    parsed = [[_window(w.tolist(), token_texts, before) for w in windows] for windows in context_tokens.astype(np.int64)]
    background: Counter[str] = Counter()
    n_windows = 0
    for i in range(S):
        for k, (words, _, _) in enumerate(parsed[i]):
            if acts[i, k] > 0:
                background.update(words)
                n_windows += 1
    n_windows = max(n_windows, 1)
    labels: list[Label] = []
    for i in range(S):
        live = [(parsed[i][k], float(acts[i, k])) for k in range(acts.shape[1]) if acts[i, k] > 0]
        labels.append(_label(live, background, n_windows, promoted_ids[i], token_texts))
    return [_from_neighbours(lab, neighbour_ids[i], labels) if lab.kind == "unclear" else lab
            for i, lab in enumerate(labels)]


def _label(live: list, background: Counter, n_windows: int, promoted: np.ndarray, texts: Sequence[str]) -> Label:
    if not live:
        return Label("unclear (never fired on the scanned text)", "unclear")
    total = sum(a for _, a in live)
    share: Counter[str] = Counter()
    peaks: Counter[str] = Counter()
    peak_tokens: Counter[str] = Counter()
    for (words, peak, token), a in live:
        for w in words:
            share[w] += a / total
        if peak:
            peaks[peak] += a / total
        peak_tokens[token] += a / total
    top_peak, peak_share = peaks.most_common(1)[0] if peaks else ("", 0.0)
    for (words, peak, _), a in live:  # peak words count too, but not the dominant one
        if peak and peak not in words and peak not in STOPWORDS and len(peak) >= 3 and peak != top_peak:
            share[peak] += a / total
    if top_peak and peak_share < PEAK_SHARE and top_peak not in STOPWORDS and len(top_peak) >= 3:
        share[top_peak] += peak_share
    promoted_words = [texts[int(t)].strip().lower() for t in promoted if 0 <= int(t) < len(texts)]
    scored = []
    for w, s in share.items() if len(live) >= 3 else ():  # fewer contexts share nothing worth naming
        lift = s / max(background[w] / n_windows, 1e-9)
        if s >= MIN_SHARE and lift >= MIN_LIFT:
            scored.append((s * math.log(lift) * (2.0 if w in promoted_words else 1.0), w))
    if scored:
        words = tuple(w for _, w in sorted(scored, reverse=True)[:3])
        text = ", ".join(words)
        if peak_share >= PEAK_SHARE and top_peak and top_peak not in words:
            text += f" · at '{top_peak}'"
        return Label(text, "concept", words)
    # The top promoted token, only when it starts a word that the contexts themselves hold (promoted word
    # pieces such as "strugg" or "ful", and words unrelated to the contexts, say nothing to a reader).
    starts = [texts[int(t)].startswith(" ") for t in promoted if 0 <= int(t) < len(texts)]
    first = next((w for w, s in zip(promoted_words, starts) if s and w.isalpha() and share[w] >= 0.1), "")
    promotes = f" -> {first}" if first and first != top_peak else ""
    if peak_share >= PEAK_SHARE and top_peak:
        others = [p for p, w in peaks.most_common(3)[1:] if w >= 0.1]  # runners-up: east, eastern after northwest
        return Label(f'token "{top_peak}"' + (f" ({', '.join(others)})" if others else "") + promotes, "token")
    top_token, token_share = peak_tokens.most_common(1)[0]
    if token_share >= PEAK_SHARE and top_token:  # one token inside different words ("nt" of didnt, isnt)
        return Label(f'token "{top_token}"{promotes}', "token")
    families: Counter[str] = Counter()
    for peak, weight in peaks.items():
        if len(peak) >= STEM:
            families[peak[:STEM]] += weight
    if families:
        stem, family_share = families.most_common(1)[0]
        if family_share >= PEAK_SHARE:
            members = [p for p, _ in peaks.most_common() if p.startswith(stem)][:3]
            return Label(f'word "{stem}…" ({", ".join(members)}){promotes}', "token")
    return Label("unclear", "unclear")


def _from_neighbours(label: Label, neighbours: np.ndarray, labels: Sequence[Label]) -> Label:
    votes: Counter[str] = Counter()
    for j in neighbours:
        j = int(j)
        if 0 <= j < len(labels) and labels[j].kind == "concept":
            votes.update(labels[j].words)  # concept words are distinct within a label
    if votes:
        word, n = min(votes.items(), key=lambda wn: (-wn[1], wn[0]))  # ties by word: the same on every run
        if n >= 3:
            return Label(f"unclear (neighbours: {word})", "unclear", ())
    return label
