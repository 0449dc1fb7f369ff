"""The training subcommands chained through their CLI, on a tiny Llama saved to disk."""

from __future__ import annotations

import json

import numpy as np
import torch

from steering.cli import main
from steering.sae.catalogue import Catalogue
from steering.sae.formats import load_sae
from steering.training.corpus import Document, build_corpus


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_harvest_train_eval_catalogue_commands(tmp_path, tiny_model_dir, tiny_tokenizer, capsys):
    rng = np.random.default_rng(1)
    words = ["cat", "rain", "code", "music", "bread"]
    docs = [Document("wiki", str(i), text=" ".join(rng.choice(words, size=10))) for i in range(50)]
    corpus, acts, sae = tmp_path / "corpus", tmp_path / "acts", tmp_path / "sae"
    build_corpus(tiny_tokenizer, corpus, seq_len=24, eval_fraction=0.2, documents=docs)
    model = ["--model", str(tiny_model_dir), "--threads", "1"]

    assert main(["harvest", "--corpus", str(corpus), "--acts", str(acts), "--layer", "1", "--batch-size", "8",
                 "--max-tokens", "1200", "--eval-tokens", "300", *model]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    harvested = {json.loads(line)["split"]: json.loads(line)["n_tokens"] for line in out}
    assert 300 <= harvested["eval"] < 500 and 1200 <= harvested["train"] < 1400

    # a complete folder is extended when more tokens are asked for, and kept when not
    assert main(["harvest", "--corpus", str(corpus), "--acts", str(acts), "--layer", "1", "--batch-size", "8",
                 "--split", "train", "--max-tokens", "1500", *model]) == 0
    extended = _last_json(capsys)["n_tokens"]
    assert 1500 <= extended < 1700
    assert main(["harvest", "--corpus", str(corpus), "--acts", str(acts), "--layer", "1", "--split", "train",
                 "--max-tokens", "1000", *model]) == 0
    assert _last_json(capsys)["n_tokens"] == extended

    assert main(["train-sae", "--acts", str(acts), "--run", str(tmp_path / "run"), "--save", str(sae),
                 "--d-sae", "96", "--k", "4", "--batch-size", "100", "--tokens", "1500", "--warmup-steps", "2"]) == 0
    assert _last_json(capsys)["status"] == "done"
    assert load_sae(sae).cfg.hook_layer == 1

    # a warm start keeps the source's features and scale, and counts its token-steps
    warm = tmp_path / "warm"
    assert main(["train-sae", "--acts", str(acts), "--run", str(tmp_path / "run-warm"), "--save", str(warm),
                 "--init-from", str(sae), "--d-sae", "96", "--k", "4", "--batch-size", "100", "--tokens", "200",
                 "--lr", "1e-7", "--warmup-steps", "1"]) == 0
    _last_json(capsys)
    source, started = load_sae(sae), load_sae(warm)
    assert started.cfg.norm_scaling_factor == source.cfg.norm_scaling_factor
    cosines = torch.nn.functional.cosine_similarity(started.W_dec.detach(), source.W_dec.detach(), dim=-1)
    assert float(cosines.min()) > 0.99
    training = started.cfg.metadata["training"]
    assert training["tokens_seen"] == 200 and training["tokens_seen_total"] == 1700
    assert training["resampled"] is None and training["calibration_l0"] == 4

    # resampling at a warm start is recorded with the threshold's L0 target
    assert main(["train-sae", "--acts", str(acts), "--run", str(tmp_path / "run-resampled"), "--save", str(warm),
                 "--init-from", str(sae), "--d-sae", "96", "--k", "4", "--batch-size", "100", "--tokens", "200",
                 "--resample-dead", "300", "--calibration-l0", "3.5", "--warmup-steps", "1"]) == 0
    _last_json(capsys)
    training = load_sae(warm).cfg.metadata["training"]
    assert training["resampled"]["scanned_tokens"] == 300 and 0 <= training["resampled"]["features"] <= 96
    assert training["calibration_l0"] == 3.5

    assert main(["eval-sae", "--sae", str(sae), "--acts", str(acts), "--corpus", str(corpus), "--ce-tokens", "48",
                 "--json", *model]) == 0
    result = _last_json(capsys)
    for key in ("l0", "variance_explained", "delta_ce", "dead_fraction", "dense_fraction", "d_sae"):
        assert key in result
    assert result["d_sae"] == 96 and result["tokens"] == harvested["eval"] and result["ce_tokens"] == 2 * 23

    assert main(["build-catalogue", "--sae", str(sae), "--acts", str(acts), "--corpus", str(corpus),
                 "--contexts", "3", *model]) == 0
    assert _last_json(capsys)["d_sae"] == 96
    cat = Catalogue.load(sae)
    reloaded = load_sae(sae)
    assert reloaded.has_stats  # statistics rewritten next to the weights
    np.testing.assert_allclose(reloaded.firing_frequency.numpy(), cat.arrays["firing_frequency"])
    assert len(cat) == 96 and sum(len(cat.feature(i).contexts) for i in range(96)) > 0


def test_layer_sweep_command_prints_a_row_per_layer(tmp_path, tiny_model_dir, tiny_tokenizer, capsys):
    rng = np.random.default_rng(2)
    docs = [Document("wiki", str(i), text=" ".join(rng.choice(["dog", "song", "rain", "bread"], size=10)))
            for i in range(40)]
    corpus = tmp_path / "corpus"
    build_corpus(tiny_tokenizer, corpus, seq_len=24, eval_fraction=0.25, documents=docs)
    assert main(["layer-sweep", "--layers", "1", "3", "--corpus", str(corpus), "--work", str(tmp_path / "w"),
                 "--train-tokens", "400", "--eval-tokens", "100", "--ce-tokens", "48", "--d-sae", "32", "--k", "4",
                 "--token-steps", "800", "--batch-size", "100", "--concepts", "dogs", "--json", "--write", str(tmp_path / "sweep.json"),
                 "--model", str(tiny_model_dir), "--threads", "1"]) == 0
    result = _last_json(capsys)
    assert [r["layer"] for r in result["layers"]] == [1, 3]
    assert json.loads((tmp_path / "sweep.json").read_text()) == result
