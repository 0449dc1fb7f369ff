"""The dictionary-learning pipeline end to end on a tiny random Llama and a tiny corpus.

corpus -> harvest -> train a few steps (CLI) -> save/load -> eval -> catalogue -> load catalogue.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from steering.cli import main as training_main
from steering.sae.catalogue import Catalogue
from steering.sae.formats import load_sae
from steering.training.catalogue_builder import build_catalogue, unembedding
from steering.training.corpus import Document, build_corpus, load_rows
from steering.training.evaluate import activation_metrics, ce_losses
from steering.training.harvest import harvest
from steering.training.store import ActivationStore

WORDS = ["paris", "dogs", "pizza", "rain", "music", "python", "river", "happy"]


def _documents(n: int = 60) -> list[Document]:
    rng = np.random.default_rng(0)
    docs = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS, size=12))
        if i % 3 == 0:
            docs.append(Document("chat", f"c{i}", messages=(("user", f"tell me about {words}"), ("assistant", words))))
        else:
            docs.append(Document("wiki", f"w{i}", text=f"All about {words}."))
    return docs


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from steering.evaluation.random_models import byte_tokenizer

    return byte_tokenizer()


def _model(tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=None, eos_token_id=2, pad_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    return model.eval().requires_grad_(False)


@pytest.fixture
def tiny_llama(tiny_tokenizer):
    """Like conftest's tiny_llama (hidden 64, 4 layers); built here so the module shares one harvest."""
    return _model(tiny_tokenizer)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_tokenizer):
    tmp_path = tmp_path_factory.mktemp("pipeline")
    tiny_llama = _model(tiny_tokenizer)
    corpus = tmp_path / "corpus"
    meta = build_corpus(tiny_tokenizer, corpus, seq_len=32, seed=0, eval_fraction=0.2, documents=_documents())
    acts = tmp_path / "acts"
    for split in ("train", "eval"):
        harvest(tiny_llama, load_rows(corpus, split), acts / split, layer=2, batch_size=8, chunk_tokens=500,
                meta={"model_id": "tiny", "corpus": str(corpus)}, progress=False)
    return tmp_path, corpus, acts, meta


def test_corpus_renders_chats_with_the_template_and_packs_rows(pipeline, tiny_tokenizer):
    _, corpus, _, meta = pipeline
    train = load_rows(corpus, "train")
    assert train.shape[1] == 32 and train.dtype == np.int32
    text = tiny_tokenizer.decode(np.asarray(train).reshape(-1).tolist())
    assert "<|im_start|>assistant\n" in text and "<|endoftext|>" in text
    assert meta["splits"]["eval"]["rows"] > 0
    assert set(meta["splits"]["train"]["per_source"]) == {"chat", "wiki"}


def test_harvest_skips_position_zero_and_matches_the_model(pipeline, tiny_llama):
    _, corpus, acts, _ = pipeline
    store = ActivationStore(acts / "train")
    rows = load_rows(corpus, "train")
    assert len(store) == store.meta["n_tokens"] == rows.shape[0] * (rows.shape[1] - 1)  # no outliers in a tiny model
    pos = store.positions(np.arange(len(store)))
    assert pos[:, 1].min() == 1
    with torch.no_grad():
        hidden = tiny_llama(input_ids=torch.from_numpy(rows[:2].astype(np.int64)), output_hidden_states=True).hidden_states[3]
    i = 5
    r, p = pos[i]
    torch.testing.assert_close(store.get(np.array([i]))[0], hidden[r, p].half().float())


def test_train_eval_catalogue_end_to_end(pipeline, tiny_llama, tiny_tokenizer, capsys):
    tmp, corpus, acts, _ = pipeline
    run, save = tmp / "run", tmp / "sae"
    argv = ["train-sae", "--acts", str(acts), "--run", str(run), "--save", str(save), "--d-sae", "128", "--k", "4",
            "--batch-size", "64", "--tokens", "4096", "--warmup-steps", "2", "--checkpoint-every", "5",
            "--dead-tokens", "256"]
    assert training_main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == "done"
    report = json.loads((run / "report.json").read_text())
    assert report["training_tokens_per_s"] > 0 and report["harvest_tokens_per_s"] > 0
    assert (run / "training_curves.png").stat().st_size > 1000
    log = report["log"]
    assert log[-1]["variance_explained"] > log[0]["variance_explained"]

    sae = load_sae(save)
    assert sae.cfg.architecture == "batchtopk" and sae.uses_threshold and sae.supports_sparse_encode
    assert sae.cfg.hook_layer == 2 and sae.cfg.normalize_activations == "expected_average_only_in"
    eval_store = ActivationStore(acts / "eval")
    metrics = activation_metrics(sae, eval_store.slices(100)).result()
    assert 0 < metrics["l0"] < 16 and metrics["variance_explained"] > 0.3
    rows = load_rows(corpus, "eval")
    ce = ce_losses(tiny_llama, sae, rows[:4], batch_size=2, mean=torch.zeros(64))
    assert ce["ce_spliced"] > 0 and np.isfinite(ce["delta_ce"]) and "ce_loss_recovered" in ce
    identity = ce_losses(tiny_llama.double(), sae.double(), rows[:4], batch_size=2, error=True)
    assert identity["delta_ce"] == pytest.approx(0.0, abs=1e-9)  # reconstruction + error = clean

    tiny_llama.float()
    info = build_catalogue(sae.float(), eval_store, rows, tiny_tokenizer, unembedding(tiny_llama), save,
                           n_contexts=5, before=4, after=2, progress=False)
    assert info["d_sae"] == 128
    cat = Catalogue.load(save)
    assert len(cat) == 128
    live = int(np.argmax(cat.arrays["firing_frequency"]))
    feat = cat.feature(live)
    assert feat.max_activation > 0 and 0 < feat.firing_frequency <= 1
    assert 1 <= len(feat.contexts) <= 5 and "[[" in feat.contexts[0].text
    assert feat.contexts[0].activation == pytest.approx(feat.max_activation, rel=1e-2)
    assert len(feat.promoted) == 10 and feat.promoted[0][1] >= feat.promoted[-1][1]
    assert len(feat.neighbours) == 10 and all(j != live for j, _ in feat.neighbours)
    with_letter = [(i, c.token) for i in range(len(cat)) for c in cat.feature(i).contexts[:1] if c.token.isalpha()]
    assert with_letter
    i, letter = with_letter[0]
    assert i in [f.index for f in cat.search(letter, limit=len(cat))]
    assert cat.search("zzzz-no-match") == []
    with pytest.raises(IndexError):
        cat.feature(128)
    # the SAE's statistics were set from the same held-out pass
    torch.testing.assert_close(sae.max_activation, torch.from_numpy(cat.arrays["max_activation"]))


def test_training_resumes_from_a_checkpoint(pipeline):
    from steering.training.train import TrainConfig, train

    _, _, acts, _ = pipeline
    store = ActivationStore(acts / "train")
    cfg = TrainConfig(d_sae=64, k=4, batch_size=64, total_tokens=64 * 12, warmup_steps=2, checkpoint_every=4,
                      calibration_batches=2)
    sae_a, _ = train(store, pipeline[0] / "a", cfg, progress=False)
    paused, tr = train(store, pipeline[0] / "b", cfg, max_seconds=0.0, progress=False)
    assert paused is None and tr.step == 4
    sae_b, tr_b = train(store, pipeline[0] / "b", cfg, progress=False)
    assert tr_b.step == 12
    torch.testing.assert_close(sae_a.W_dec, sae_b.W_dec)
    torch.testing.assert_close(sae_a.threshold, sae_b.threshold)


def test_matryoshka_training_makes_the_first_prefix_reconstruct_alone(pipeline):
    """Trained with prefixes (8, 64) on the same tokens and seed, the first 8 features alone reconstruct the
    training text better than the plain run's first 8; the prefixes are recorded; bad ones are refused."""
    from steering.training.train import TrainConfig, Trainer, train

    _, _, acts, _ = pipeline
    store = ActivationStore(acts / "train")
    x = store.get(torch.arange(min(len(store), 512)).numpy())

    @torch.no_grad()
    def first_prefix_fvu(sae) -> float:
        f = sae.encode(x)
        f[:, 8:] = 0
        return float((sae.decode(f) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())

    fvu = {}
    for prefixes in ((), (8, 64)):
        cfg = TrainConfig(d_sae=64, k=4, batch_size=64, total_tokens=64 * 40, warmup_steps=2, calibration_batches=2,
                          matryoshka=prefixes)
        sae, _ = train(store, pipeline[0] / f"m{len(prefixes)}", cfg, progress=False)
        assert sae.cfg.metadata["training"]["matryoshka_prefixes"] == list(prefixes)
        fvu[prefixes] = first_prefix_fvu(sae)
    assert fvu[(8, 64)] < fvu[()], fvu
    with pytest.raises(ValueError, match="prefixes"):
        Trainer(store, TrainConfig(d_sae=64, k=4, batch_size=64, matryoshka=(16, 128)))


def test_resample_dead_reinitialises_only_features_that_never_fire(pipeline):
    from steering.training.train import TrainConfig, Trainer

    _, _, acts, _ = pipeline
    store = ActivationStore(acts / "train")
    trainer = Trainer(store, TrainConfig(d_sae=64, k=4, batch_size=64))
    silenced = torch.tensor([3, 17, 40])
    with torch.no_grad():
        trainer.b_enc[silenced] = -1e4  # these can never enter the top k
    before = [p.clone() for p in trainer.params]
    resampled = trainer.resample_dead(64 * 8)
    assert set(silenced.tolist()) <= set(resampled.tolist())
    live = torch.ones(64, dtype=torch.bool)
    live[resampled] = False
    for p, q in zip(trainer.params[:3], before[:3]):
        torch.testing.assert_close(p[live], q[live])
    torch.testing.assert_close(trainer.W_dec[resampled].norm(dim=-1), torch.ones(len(resampled)))
    enc_norm = before[0][live].norm(dim=-1).mean()
    torch.testing.assert_close(trainer.W_enc_T[resampled].norm(dim=-1), enc_norm.expand(len(resampled)))
    assert (trainer.b_enc[resampled] == before[1][live].median()).all()


def test_threshold_calibrates_to_the_requested_mean_l0(pipeline):
    from steering.training.train import TrainConfig, Trainer

    _, _, acts, _ = pipeline
    store = ActivationStore(acts / "train")
    for target in (None, 2.5):
        cfg = TrainConfig(d_sae=64, k=4, batch_size=64, calibration_batches=3, calibration_l0=target)
        trainer = Trainer(store, cfg)
        theta = trainer.calibrate_threshold()
        stream, fired, n = store.batches(64, cfg.seed + 1), 0, 0
        for _ in range(3):
            x = next(stream) * trainer.scale
            pre = torch.addmm(trainer.b_enc, x - trainer.b_dec, trainer.W_enc_T.T)
            fired, n = fired + int((pre >= theta).sum()), n + x.shape[0]
        assert fired / n == pytest.approx(target or 4, abs=1 / n)
    with pytest.raises(ValueError, match="calibration_l0"):
        Trainer(store, TrainConfig(d_sae=64, k=4, batch_size=64, calibration_l0=5)).calibrate_threshold()


def test_layer_sweep_measures_every_layer_with_one_harvest(pipeline, tiny_llama, tiny_tokenizer, tmp_path):
    from steering.training.layer_sweep import SweepBudget, harvest_layers, layer_sweep
    from steering.training.train import TrainConfig
    from tests.support import tiny_sm

    _, corpus, acts, _ = pipeline
    train_rows = load_rows(corpus, "train")
    # one forward per batch records each layer exactly as a single-layer harvest does
    stores = harvest_layers(tiny_llama, train_rows, tmp_path / "h", [1, 2], max_tokens=200, batch_size=8,
                            outlier_factor=10.0)
    single = ActivationStore(acts / "train")  # the pipeline harvested layer 2
    n = min(len(stores[2]), 50)
    torch.testing.assert_close(stores[2].get(np.arange(n)), single.get(np.arange(n)))
    assert not torch.equal(stores[1].get(np.arange(n)), stores[2].get(np.arange(n)))

    loaded = tiny_sm(tiny_llama, tiny_tokenizer).loaded
    budget = SweepBudget(train_tokens=600, eval_tokens=200, ce_tokens=64, harvest_batch=8,
                         train=TrainConfig(d_sae=32, k=4, total_tokens=1200, batch_size=100))
    table = layer_sweep(loaded, train_rows, load_rows(corpus, "eval"), [2, 1], tmp_path / "sweep", budget,
                        concepts=["dogs", "music"], progress=False)
    assert [r["layer"] for r in table] == [1, 2]
    for r in table:
        assert r["train_tokens"] >= 600 and r["ce_tokens"] > 0
        assert 0 < r["l0"] <= 32 and r["variance_explained"] <= 1
        assert set(r["concepts"]) == {"dogs", "music"}
        scores = [c["score"] for c in r["concepts"].values()]
        assert r["concept_score"] == pytest.approx(sum(scores) / 2, abs=1e-4)


def test_eval_sae_harvests_the_held_out_activations_it_needs_once(pipeline, tiny_tokenizer, tmp_path, capsys):
    from steering.sae.autoencoder import SAEConfig, SparseAutoencoder
    from steering.sae.formats import save_sae

    _, corpus, _, _ = pipeline
    model_dir = tmp_path / "tiny-llama"
    _model(tiny_tokenizer).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    sae_dir = save_sae(SparseAutoencoder.random(SAEConfig(d_in=64, d_sae=96, architecture="relu", hook_layer=2)),
                       tmp_path / "sae")
    fresh = tmp_path / "acts-never-harvested"
    argv = ["eval-sae", "--sae", str(sae_dir), "--acts", str(fresh), "--corpus", str(corpus), "--model",
            str(model_dir), "--ce-tokens", "64", "--batch-size", "2", "--json"]
    assert training_main(argv) == 0
    out = capsys.readouterr()
    assert "harvesting" in out.err and (fresh / "eval" / "meta.json").exists()
    first = json.loads(out.out.strip().splitlines()[-1])
    assert first["hook_layer"] == 2 and 0 < first["l0"] and np.isfinite(first["delta_ce"])
    assert training_main(argv) == 0  # the second run reads what the first stored
    again = capsys.readouterr()
    assert "harvesting" not in again.err and json.loads(again.out.strip().splitlines()[-1])["l0"] == first["l0"]
