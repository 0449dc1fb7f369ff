"""The feature catalogue of an SAE: what each feature fires on and what it promotes.

Built by `python -m steering build-catalogue` (steering.training.catalogue_builder)
and stored next to the SAE's weights as two files:

    catalogue.json           {"format": "steering-catalogue", "version": 1,
                              "d_sae", "n_contexts", "window": [before, after],
                              "n_tokens" (held-out tokens scanned), "source",
                              "labels": [str] * d_sae,
                              "label_kinds": ["concept" | "token" | "unclear"] * d_sae
                              (optional; `steering.training.labels`)}
    catalogue.safetensors    arrays, S = d_sae, C = n_contexts, W = before+1+after
        max_activation       float32 [S]     max over the scanned tokens
        firing_frequency     float32 [S]     fraction of scanned tokens where f > 0
        context_tokens       uint16 [S, C, W] token ids of each window (int32
                             when the vocabulary has 65,535 ids or more); the
                             peak token at index `before`; the dtype's largest
                             value (uint16) or -1 (int32) pads windows cut by a
                             sequence start or end, and unused contexts
        context_activation   float16 [S, C]  the feature's value at the peak (0 = none)
        promoted_ids, suppressed_ids        int32 [S, 10]
        promoted_values, suppressed_values  float16 [S, 10]  logit effect of the
                             decoder row: W_dec[i] @ (W_U * g).T, g the final
                             norm's weight (the norm's per-token scale left out)
        neighbour_ids        int32 [S, 10]   nearest features by decoder cosine
        neighbour_cosine     float16 [S, 10]
        vocab_bytes          uint8 [sum]     every token's bytes, concatenated
        vocab_offsets        int64 [V + 1]   token t is vocab_bytes[o[t]:o[t+1]]

Contexts come from held-out text, best first, at most one per corpus row.
This loader needs numpy and safetensors only (no torch model, no tokenizer):
token ids are turned into text with the stored byte table.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

CATALOGUE_JSON = "catalogue.json"
CATALOGUE_ARRAYS = "catalogue.safetensors"
FORMAT = "steering-catalogue"
PEAK_OPEN, PEAK_CLOSE = "[[", "]]"

log = logging.getLogger(__name__)


def _ids(arr: np.ndarray) -> np.ndarray:
    """Stored token ids -> int64 with -1 for padding."""
    out = arr.astype(np.int64)
    if arr.dtype == np.uint16:
        out[out == np.iinfo(np.uint16).max] = -1
    return out


@dataclass(frozen=True)
class Context:
    """One activating window: text before the peak token, the token, text after."""

    before: str
    token: str
    after: str
    activation: float

    @property
    def text(self) -> str:
        """The window with the peak token marked as [[token]]."""
        return f"{self.before}{PEAK_OPEN}{self.token}{PEAK_CLOSE}{self.after}"


@dataclass(frozen=True)
class FeatureInfo:
    index: int
    label: str
    max_activation: float
    firing_frequency: float
    contexts: tuple[Context, ...]
    promoted: tuple[tuple[str, float], ...]
    suppressed: tuple[tuple[str, float], ...]
    neighbours: tuple[tuple[int, float], ...]
    label_kind: str | None = None  # concept | token | unclear (steering.training.labels); None: not recorded

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "label": self.label, "label_kind": self.label_kind,
            "max_activation": self.max_activation,
            "firing_frequency": self.firing_frequency,
            "contexts": [{"text": c.text, "token": c.token, "activation": c.activation} for c in self.contexts],
            "promoted": [{"token": t, "value": v} for t, v in self.promoted],
            "suppressed": [{"token": t, "value": v} for t, v in self.suppressed],
            "neighbours": [{"index": i, "cosine": c} for i, c in self.neighbours],
        }


class Catalogue:
    """A loaded catalogue; `feature(i)`, `search(query)`, `len(catalogue)`."""

    def __init__(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]):
        if meta.get("format") != FORMAT:
            raise ValueError(f"not a feature catalogue (format {meta.get('format')!r}, expected {FORMAT!r})")
        self.meta = meta
        self.arrays = arrays
        self.labels: list[str] = list(meta["labels"])
        # concept / token / unclear per feature (None for catalogues built before label kinds)
        self.label_kinds: list[str | None] = list(meta.get("label_kinds") or [None] * len(self.labels))
        self._concept_labels = np.array([kind == "concept" for kind in self.label_kinds], dtype=bool)
        self.before = int(meta["window"][0])
        offsets = arrays["vocab_offsets"]
        blob = arrays["vocab_bytes"].tobytes()
        self._token_bytes = [blob[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]

    @classmethod
    def load(cls, path: str | Path) -> "Catalogue":
        """From the SAE folder (or the catalogue.json path)."""
        from safetensors.numpy import load_file

        folder = Path(path)
        if folder.is_file():
            folder = folder.parent
        meta_path, arrays_path = folder / CATALOGUE_JSON, folder / CATALOGUE_ARRAYS
        if not meta_path.exists() or not arrays_path.exists():
            raise FileNotFoundError(f"no catalogue in {folder}: run `python -m steering build-catalogue`")
        return cls(json.loads(meta_path.read_text()), load_file(str(arrays_path)))

    @classmethod
    def find(cls, sae_dir: str | Path | None, d_sae: int) -> "Catalogue | None":
        """The catalogue stored with an SAE of `d_sae` features, or None (no files, unreadable, or
        made for another SAE: logged, never fatal, since an SAE works without its catalogue)."""
        if sae_dir is None:
            return None
        folder = Path(sae_dir)
        folder = folder.parent if folder.is_file() else folder
        if not folder.is_dir():
            return None
        try:
            catalogue = cls.load(folder)
        except FileNotFoundError:
            log.info("no feature catalogue in %s: labels and contexts are unavailable", folder)
            return None
        except (OSError, ValueError, KeyError) as e:
            log.warning("cannot read the feature catalogue in %s (%s): going on without it", folder, e)
            return None
        if len(catalogue) != d_sae:
            log.warning("the catalogue in %s has %d features, the SAE %d: going on without it",
                        folder, len(catalogue), d_sae)
            return None
        log.info("feature catalogue loaded from %s (%d features)", folder, len(catalogue))
        return catalogue

    def __len__(self) -> int:
        return len(self.labels)

    # ------------------------------------------------------------ decoding
    def decode(self, ids: Any) -> str:
        """Token ids (negative ids skipped) -> text."""
        data = b"".join(self._token_bytes[int(i)] for i in ids if 0 <= int(i) < len(self._token_bytes))
        return data.decode("utf-8", errors="replace")

    def token(self, token_id: int) -> str:
        return self.decode([token_id])

    def _check(self, index: int) -> int:
        if not 0 <= int(index) < len(self):
            raise IndexError(f"feature {index} is out of range: the catalogue has {len(self)} features")
        return int(index)

    def feature(self, index: int) -> FeatureInfo:
        i = self._check(index)
        a = self.arrays
        contexts = []
        for tokens, act in zip(_ids(a["context_tokens"][i]), a["context_activation"][i]):
            if act <= 0 or tokens[self.before] < 0:
                continue
            contexts.append(Context(self.decode(tokens[: self.before]), self.token(tokens[self.before]),
                                    self.decode(tokens[self.before + 1 :]), float(act)))
        pairs = lambda ids, vals: tuple((self.token(t), float(v)) for t, v in zip(ids, vals))  # noqa: E731
        return FeatureInfo(
            index=i,
            label=self.labels[i],
            max_activation=float(a["max_activation"][i]),
            firing_frequency=float(a["firing_frequency"][i]),
            contexts=tuple(contexts),
            promoted=pairs(a["promoted_ids"][i], a["promoted_values"][i]),
            suppressed=pairs(a["suppressed_ids"][i], a["suppressed_values"][i]),
            neighbours=tuple((int(j), float(c)) for j, c in zip(a["neighbour_ids"][i], a["neighbour_cosine"][i])),
            label_kind=self.label_kinds[i],
        )

    # ------------------------------------------------------------ search
    @cached_property
    def _vocab_lower(self) -> list[str]:
        return [b.decode("utf-8", errors="replace").strip().lower() for b in self._token_bytes]

    def _matching_tokens(self, word: str) -> np.ndarray:
        """Ids of tokens equal to the word, or (for words of 4+ letters) a prefix of it of 4+ letters."""
        word = word.lower()
        return np.array([t for t, s in enumerate(self._vocab_lower)
                         if s == word or (len(word) >= 4 and len(s) >= 4 and word.startswith(s))], dtype=np.int64)

    def search_scores(self, query: str) -> np.ndarray:
        """A relevance score per feature [S] (0 = no match).

        Per word of the query: +1 per top context whose peak token is the word
        (weighted by the context's activation / the feature's best), +0.2 per
        context containing it elsewhere, +1 when it is a top promoted token, +2
        when the label contains it, and +100 when it is a concept label (what
        the contexts share, not the token they peak on), so that concept
        features come first. Word scores are summed.
        """
        a = self.arrays
        scores = np.zeros(len(self), dtype=np.float64)
        ctx = _ids(a["context_tokens"])
        act = a["context_activation"].astype(np.float64)
        weight = act / np.maximum(act[:, :1], 1e-9)
        labels = [label.lower() for label in self.labels]
        for word in query.lower().split():
            ids = self._matching_tokens(word)
            if ids.size:
                peak = np.isin(ctx[:, :, self.before], ids)
                anywhere = np.isin(ctx, ids).any(-1) & ~peak
                scores += (peak * weight).sum(-1) + 0.2 * (anywhere * weight).sum(-1)
                scores += np.isin(a["promoted_ids"], ids).any(-1)
            in_label = np.fromiter((word in label for label in labels), dtype=bool, count=len(labels))
            scores += 2.0 * in_label + 100.0 * (in_label & self._concept_labels)
        return scores

    def matches(self, query: str, limit: int = 10) -> list[tuple[int, float]]:
        """(feature index, score) of the features best matching `query`, best first (ties: the larger
        max activation first); only scores > 0."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        scores = self.search_scores(query)
        order = np.lexsort((-self.arrays["max_activation"].astype(np.float64), -scores))
        return [(int(i), float(scores[i])) for i in order[:limit] if scores[i] > 0]

    def search(self, query: str, limit: int = 10) -> list[FeatureInfo]:
        """Features best matching `query` (labels, peak tokens, contexts, promoted tokens), best first."""
        return [self.feature(i) for i, _ in self.matches(query, limit)]
