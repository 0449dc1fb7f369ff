"""The catalogue loader on a hand-built three-feature catalogue (no model, no torch)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from steering.sae.catalogue import CATALOGUE_ARRAYS, CATALOGUE_JSON, FORMAT, Catalogue

VOCAB = [b"<pad>", b" Paris", b" London", b" is", b" big", b" dog", b"\xc3", b"\xa9", b" caf"]
PAD = np.iinfo(np.uint16).max


def _write(folder, labels=("Paris / London", "dog", "(no contexts)")):
    S, C, W = 3, 2, 4  # window: 2 before, peak, 1 after
    ctx = np.full((S, C, W), PAD, dtype=np.uint16)
    ctx[0, 0] = [3, 4, 1, 3]  # " is big[[ Paris]] is"
    ctx[0, 1] = [PAD, 8, 2, 4]  # cut by the sequence start
    ctx[1, 0] = [8, 6, 5, 7]  # " caf\xc3[[ dog]]\xa9"
    acts = np.array([[4.0, 2.0], [1.5, 0.0], [0.0, 0.0]], dtype=np.float16)
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in VOCAB])]).astype(np.int64)
    arrays = {
        "max_activation": np.array([4.0, 1.5, 0.0], dtype=np.float32),
        "firing_frequency": np.array([0.01, 0.001, 0.0], dtype=np.float32),
        "context_tokens": ctx,
        "context_activation": acts,
        "promoted_ids": np.array([[1, 2], [5, 3], [4, 3]], dtype=np.int32),
        "promoted_values": np.array([[2.0, 1.0], [3.0, 0.5], [0.1, 0.0]], dtype=np.float16),
        "suppressed_ids": np.array([[5, 4], [1, 2], [1, 2]], dtype=np.int32),
        "suppressed_values": np.array([[-2.0, -1.0], [-1.0, -0.5], [-0.1, 0.0]], dtype=np.float16),
        "neighbour_ids": np.array([[1, 2], [0, 2], [0, 1]], dtype=np.int32),
        "neighbour_cosine": np.array([[0.5, 0.1], [0.5, 0.2], [0.1, 0.2]], dtype=np.float16),
        "vocab_bytes": np.frombuffer(b"".join(VOCAB), dtype=np.uint8).copy(),
        "vocab_offsets": offsets,
    }
    save_file(arrays, str(folder / CATALOGUE_ARRAYS))
    meta = {"format": FORMAT, "version": 1, "d_sae": S, "n_contexts": C, "window": [2, 1], "n_tokens": 100,
            "source": "test", "labels": list(labels)}
    (folder / CATALOGUE_JSON).write_text(json.dumps(meta))


def test_feature_contexts_tokens_and_neighbours(tmp_path):
    _write(tmp_path)
    cat = Catalogue.load(tmp_path / CATALOGUE_JSON)
    assert len(cat) == 3
    f = cat.feature(0)
    assert f.label == "Paris / London" and f.max_activation == 4.0
    assert [c.text for c in f.contexts] == [" is big[[ Paris]] is", " caf[[ London]] big"]
    assert f.contexts[0].activation == 4.0
    assert f.promoted == ((" Paris", 2.0), (" London", 1.0))
    assert f.suppressed[0] == (" dog", -2.0)
    assert f.neighbours == ((1, 0.5), (2, pytest.approx(0.1, rel=1e-3)))
    # UTF-8 split across tokens joins back when decoded together
    assert cat.decode([8, 6, 7]) == " café"
    dog = cat.feature(1)
    assert len(dog.contexts) == 1 and dog.contexts[0].token == " dog"
    assert cat.feature(2).contexts == ()
    assert json.loads(json.dumps(dog.to_dict()))["contexts"][0]["activation"] == 1.5


def test_search_prefers_peak_tokens_then_labels(tmp_path):
    _write(tmp_path)
    cat = Catalogue.load(tmp_path)
    assert [f.index for f in cat.search("paris")] == [0]
    assert [f.index for f in cat.search("Dog", limit=1)] == [1]
    assert cat.search("contexts")[0].index == 2  # label match only
    assert cat.search("nothing-here") == []
    with pytest.raises(ValueError):
        cat.search("paris", limit=0)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="build-catalogue"):
        Catalogue.load(tmp_path)
    _write(tmp_path)
    cat = Catalogue.load(tmp_path)
    with pytest.raises(IndexError, match="3 features"):
        cat.feature(3)
    (tmp_path / CATALOGUE_JSON).write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a feature catalogue"):
        Catalogue.load(tmp_path)
