"""Feature labels from catalogue arrays: concept, token and unclear kinds, and search ranking by them."""

from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import save_file

from steering.sae.catalogue import CATALOGUE_ARRAYS, CATALOGUE_JSON, FORMAT, Catalogue
from steering.training.catalogue_builder import relabel
from steering.training.labels import make_labels

FILLER = [" river", " music", " rain", " paper", " table", " window", " garden", " train", " coffee", " winter",
          " summer", " market", " letter", " mountain", " story", " doctor", " engine", " island", " castle", " song"]
WORDS = [" the", " of", " dog", " puppy", " bark", " leash"] + FILLER
TEXTS = ["<pad>"] + WORDS
ID = {w.strip(): i for i, w in enumerate(TEXTS)}
BEFORE, AFTER, C = 4, 2, 8
PAD = -1


def _windows(rng, n, peak, extra=()):
    """n windows of filler words with `peak` at the peak and each word of `extra` somewhere else."""
    out = np.full((n, BEFORE + 1 + AFTER), PAD, dtype=np.int64)
    for k in range(n):
        row = rng.choice([ID[w.strip()] for w in FILLER], size=BEFORE + 1 + AFTER)
        for j, word in enumerate(extra):
            row[j] = ID[word]
        row[BEFORE] = ID[peak] if isinstance(peak, str) else ID[rng.choice(peak)]
        out[k] = row
    return out


def _catalogue_arrays():
    rng = np.random.default_rng(0)
    S = 40
    ctx = np.zeros((S, C, BEFORE + 1 + AFTER), dtype=np.int64)
    acts = np.ones((S, C), dtype=np.float32)
    for i in range(S):  # background: features peaking on random filler words
        ctx[i] = _windows(rng, C, [w.strip() for w in FILLER])
    ctx[0] = _windows(rng, C, "the", extra=("dog", "puppy"))  # a dog concept, peaking on "the"
    ctx[1] = _windows(rng, C, "of")  # a token feature: "of", nothing shared around it
    for i in (2, 3, 4):  # three more dog features: the neighbours of feature 5
        ctx[i] = _windows(rng, C, ["bark", "leash"], extra=("dog",))
    ctx[5] = _windows(rng, C, [w.strip() for w in FILLER])  # unclear by its contexts
    acts[6] = 0  # never fired
    promoted = np.tile(np.arange(1, 4), (S, 1))
    promoted[0] = [ID["dog"], ID["puppy"], ID["the"]]
    neighbours = np.tile(np.arange(30, 40), (S, 1))
    neighbours[5] = [2, 3, 4, 30, 31, 32, 33, 34, 35, 36]
    return ctx, acts, promoted, neighbours


def test_labels_name_what_the_contexts_share_and_say_when_nothing_is_shared():
    ctx, acts, promoted, neighbours = _catalogue_arrays()
    labels = make_labels(ctx, acts, promoted, neighbours, TEXTS, BEFORE)
    dog = labels[0]
    assert dog.kind == "concept" and dog.words[:2] in (("dog", "puppy"), ("puppy", "dog"))
    assert dog.text.endswith("· at 'the'")  # the peak token is a detail, not the label
    assert labels[1].kind == "token" and labels[1].text.startswith('token "of"')
    assert all(labels[i].kind == "concept" and "dog" in labels[i].words for i in (2, 3, 4))
    assert labels[5] .kind == "unclear" and labels[5].text == "unclear (neighbours: dog)"
    assert labels[6].kind == "unclear" and "never fired" in labels[6].text
    background = [labels[i] for i in range(7, 30)]
    assert sum(lab.kind == "concept" for lab in background) <= 2  # filler words are not concepts


def test_relabel_rewrites_the_catalogue_and_search_puts_concept_features_first(tmp_path):
    ctx, acts, promoted, neighbours = _catalogue_arrays()
    S = ctx.shape[0]
    vocab = [t.encode() for t in TEXTS]
    stored = np.where(ctx < 0, np.iinfo(np.uint16).max, ctx).astype(np.uint16)
    stored[7] = _windows(np.random.default_rng(1), C, "dog")  # a token feature: "dog" at the peak, filler around
    arrays = {
        "max_activation": np.ones(S, dtype=np.float32), "firing_frequency": np.full(S, 0.01, dtype=np.float32),
        "context_tokens": stored, "context_activation": acts.astype(np.float16),
        "promoted_ids": promoted.astype(np.int32), "promoted_values": np.ones(promoted.shape, dtype=np.float16),
        "suppressed_ids": promoted.astype(np.int32), "suppressed_values": -np.ones(promoted.shape, dtype=np.float16),
        "neighbour_ids": neighbours.astype(np.int32), "neighbour_cosine": np.ones(neighbours.shape, dtype=np.float16),
        "vocab_bytes": np.frombuffer(b"".join(vocab), dtype=np.uint8).copy(),
        "vocab_offsets": np.concatenate([[0], np.cumsum([len(b) for b in vocab])]).astype(np.int64),
    }
    save_file(arrays, str(tmp_path / CATALOGUE_ARRAYS))
    meta = {"format": FORMAT, "version": 1, "d_sae": S, "n_contexts": C, "window": [BEFORE, AFTER],
            "n_tokens": 1000, "source": "test", "labels": ["old"] * S}
    (tmp_path / CATALOGUE_JSON).write_text(json.dumps(meta))
    assert Catalogue.load(tmp_path).search("dog", limit=1)[0].index == 7  # before: peak tokens win
    kinds = relabel(tmp_path)
    assert kinds["concept"] >= 4 and kinds["token"] >= 1 and kinds["unclear"] >= 2
    cat = Catalogue.load(tmp_path)
    assert cat.feature(0).label_kind == "concept" and "dog" in cat.feature(0).label
    first = [f.index for f in cat.search("dog", limit=5)]
    assert set(first[:4]) == {0, 2, 3, 4} and first.index(7) > 3  # concept features before the token one
