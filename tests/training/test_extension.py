"""Growing a trained SAE: new features learn what the base misses; the old ones do not change."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from steering.cli import main
from steering.errors import ParameterError
from steering.sae.autoencoder import SAEConfig, SparseAutoencoder
from steering.sae.catalogue import Catalogue
from steering.sae.formats import load_sae
from steering.training.corpus import Document, build_corpus, load_topics
from steering.training.extension import ExtensionConfig, base_errors, grown_sae, new_features_only, train_extension
from steering.training.store import ActivationStore, ActivationWriter


def _base(d: int, S: int) -> SparseAutoencoder:
    cfg = SAEConfig(d_in=d, d_sae=S, architecture="jumprelu")
    sae = SparseAutoencoder.random(cfg, seed=3)
    with torch.no_grad():
        sae.threshold.fill_(0.3)
    return sae


def _store(tmp_path, x: np.ndarray) -> ActivationStore:
    writer = ActivationWriter(tmp_path, d_model=x.shape[1], chunk_tokens=512)
    index = np.stack([np.arange(len(x)), np.zeros(len(x))], 1).astype(np.int32)
    writer.append(x, index, rows_done=len(x))
    writer.finish({"layer": 0})
    return ActivationStore(tmp_path)


def test_extension_finds_the_missing_direction_and_keeps_the_old_features(tmp_path):
    d, S = 24, 16
    base = _base(d, S)
    gen = torch.Generator().manual_seed(0)
    # Tokens are sums of base features, and a fifth of them also carry a direction the base has no feature for.
    missing = torch.randn(d, generator=gen)
    missing -= base.W_dec.detach().T @ torch.linalg.lstsq(base.W_dec.detach().T, missing).solution  # off their span
    missing /= missing.norm()
    T = 4096
    f = (torch.rand(T, S, generator=gen) < 0.1).float() * (1 + torch.rand(T, S, generator=gen))
    carries = torch.rand(T, generator=gen) < 0.2
    x = f @ base.W_dec.detach() + carries[:, None].float() * 3.0 * missing
    store = _store(tmp_path, x.numpy())

    h, e, counts = base_errors(base, [store])
    assert counts == [T] and h.shape == e.shape == (T, d)
    cfg = ExtensionConfig(n_features=8, k=0.5, lr=3e-3, batch_size=256, epochs=6, warmup_steps=10)
    ext = train_extension(h, e, cfg, progress=False)
    cos = (ext["W_dec"] @ missing).abs()
    assert float(cos.max()) > 0.9, cos

    with pytest.raises(ParameterError) as bad:
        ExtensionConfig(n_features=8, k=9)
    assert bad.value.param == "k"

    grown = grown_sae(base, ext, {"note": "test"})
    assert grown.d_sae == S + 8 and grown.cfg.metadata["note"] == "test"
    with torch.no_grad():
        old = base.encode(x)
        new = grown.encode(x)
        assert torch.equal(new[:, :S], old)  # the base's features read exactly as before
        err_base = (x - base(x)).pow(2).sum(-1).mean()
        err_grown = (x - grown(x)).pow(2).sum(-1).mean()
        assert err_grown < 0.5 * err_base
        # the best new feature fires on the tokens that carry the direction
        best = int(cos.argmax())
        fires = new[:, S + best] > 0
        assert float(fires[carries].float().mean()) > 0.8 and float(fires[~carries].float().mean()) < 0.1
        assert torch.allclose(new_features_only(grown, S).encode(x), new[:, S:], atol=1e-5)


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_topic_text_is_seeded_and_read_back_as_chats(tmp_path, tiny_model_dir, capsys):
    questions = tmp_path / "questions.txt"
    questions.write_text("# a comment\nWhat is a bridge?\n\nDescribe the fog.\n")
    model = ["--model", str(tiny_model_dir), "--threads", "1"]
    outs = []
    for name in ("a", "b"):
        out = tmp_path / "texts" / f"{name}.jsonl"
        assert main(["write-topic-text", "--questions", str(questions), "--out", str(out), "--samples", "2",
                     "--max-tokens", "6", "--batch-size", "3", "--system", "Talk like a pirate.", *model]) == 0
        assert _last_json(capsys)["questions"] == 2
        outs.append(out.read_text())
    assert outs[0] == outs[1]  # the same command writes the same file
    items = [json.loads(line) for line in outs[0].splitlines()]
    assert {i["question"] for i in items} <= {"What is a bridge?", "Describe the fog."}
    assert all(i["system"] == "Talk like a pirate." and i["answer"] for i in items)
    docs = list(load_topics(0, tmp_path / "texts"))
    assert len(docs) == 2 * len(items) and docs[0].doc_id.startswith("a/")
    assert docs[0].messages[0] == ("user", items[0]["question"]) and docs[0].messages[1][0] == "assistant"
    assert all(d.source == "topics" for d in docs)  # the system prompt stays out of the corpus
    with pytest.raises(FileNotFoundError, match="write-topic-text"):
        list(load_topics(0, tmp_path / "nothing-written"))


def test_extend_sae_command_grows_a_trained_sae_and_its_catalogue(tmp_path, tiny_model_dir, tiny_tokenizer, capsys):
    rng = np.random.default_rng(1)
    words = ["cat", "rain", "code", "music", "bread"]
    general = [Document("wiki", str(i), text=" ".join(rng.choice(words, size=10))) for i in range(60)]
    topic = [Document("topics", f"t{i}", text=" ".join(rng.choice(["bridge", "fog", "orange"], size=10)))
             for i in range(30)]
    model = ["--model", str(tiny_model_dir), "--threads", "1"]
    folders = {}
    for name, docs in (("general", general), ("topic", topic)):
        corpus, acts = tmp_path / f"corpus-{name}", tmp_path / f"acts-{name}"
        build_corpus(tiny_tokenizer, corpus, seq_len=24, eval_fraction=0.25, documents=docs)
        assert main(["harvest", "--corpus", str(corpus), "--acts", str(acts), "--layer", "1", "--batch-size", "8",
                     "--max-tokens", "1000", "--eval-tokens", "200", *model]) == 0
        capsys.readouterr()
        folders[name] = acts
    base = tmp_path / "base"
    assert main(["train-sae", "--acts", str(folders["general"]), "--run", str(tmp_path / "run"),
                 "--save", str(base), "--d-sae", "48", "--k", "4", "--batch-size", "100", "--warmup-steps", "2"]) == 0
    capsys.readouterr()
    assert main(["build-catalogue", "--sae", str(base), "--acts", str(folders["general"]), "--contexts", "3",
                 *model]) == 0
    capsys.readouterr()
    grown_dir = tmp_path / "grown"
    assert main(["extend-sae", "--sae", str(base), "--out", str(grown_dir), "--n-features", "8", "--k", "1",
                 "--epochs", "4", "--batch-size", "128",
                 "--acts", str(folders["general"] / "train"), str(folders["topic"] / "train"),
                 "--held-out", str(folders["general"] / "eval"), str(folders["topic"] / "eval"), *model]) == 0
    report = _last_json(capsys)
    assert report["catalogue"]["features"] == 56 and report["catalogue"]["new"] == 8
    old, grown = load_sae(base), load_sae(grown_dir)
    assert grown.d_sae == 56 and grown.cfg.metadata["extension"]["start"] == 48
    assert torch.equal(grown.W_dec[:48], old.W_dec) and torch.equal(grown.threshold[:48], old.threshold)
    assert torch.equal(grown.max_activation[:48], old.max_activation)
    assert grown.has_stats  # the new features' maxima come from the held-out folders
    cat = Catalogue.load(grown_dir)
    assert len(cat) == 56 and cat.meta["extension"]["n_features"] == 8
    assert (grown_dir / "extension_report.json").exists()
    # Only the topic's words (bridge, fog, orange) have a 'g': some new feature reads mostly topic text.
    shares = [sum("g" in c.text for c in cs) / len(cs) for cs in (cat.feature(i).contexts for i in range(48, 56)) if cs]
    assert shares and max(shares) >= 0.5
