"""`python -m steering` commands for dictionary learning (`steering.training`).

    build-corpus     offline text -> packed token rows (train / eval split)
    harvest          token rows -> activations at one site, on disk (float16)
    train-sae        activations -> BatchTopK SAE (saved as JumpReLU, fp16) + report
    eval-sae         held-out L0, variance explained, delta CE, dead/dense (JSON); harvests the
                     held-out activations it needs first when they are missing (as build-catalogue does)
    build-catalogue  per-feature contexts, logit effects, labels, neighbours
    relabel-catalogue  the labels again from a stored catalogue (steering.training.labels)
    layer-sweep      a small SAE per candidate layer: reconstruction and concept scores

Defaults chain together: build-corpus writes <cache>/training/corpus/default,
harvest reads it and writes <cache>/training/acts/default-l<L>/{train,eval},
train-sae reads the train activations, writes checkpoints and the report under
<cache>/training/runs/<name> and the SAE to --save. Every step resumes where
it stopped. The shipped SAE's README gives the exact commands.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from steering.cli.common import add_model_arguments, load_language_model, set_threads
from steering.training import training_dir

SHIPPED_SAE_NAME = "smollm2-135m-l15-bt16k"
SHIPPED_SAE_DIR = Path(__file__).resolve().parent.parent / "data" / "saes" / SHIPPED_SAE_NAME


def _acts_dir(args: argparse.Namespace, layer: int | None = None) -> Path:
    """--acts, else the default folder of --layer (or of the SAE's layer)."""
    if args.acts:
        return Path(args.acts)
    return training_dir("acts", f"default-l{args.layer if args.layer is not None else layer}")


EVAL_TOKENS = 130_000  # held-out activations a harvest stores by default (and eval-sae fetches when missing)


def _sizes(text: str) -> tuple[int, ...]:
    """'1024,4096' -> (1024, 4096), for argparse."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _held_out(args: argparse.Namespace, lm: Any, layer: int, site: str) -> Path:
    """The folder of held-out activations at (layer, site): harvested here first when it holds none (the
    corpus built first when missing), with a progress bar, so that the evaluation commands work as typed
    on a fresh machine. Later calls reuse it (and a stopped harvest resumes)."""
    from steering.training.corpus import build_corpus, load_rows
    from steering.training.harvest import harvest

    folder = _acts_dir(args, layer) / "eval"
    if (folder / "meta.json").exists():
        return folder
    corpus = Path(args.corpus) if args.corpus else training_dir("corpus", "default")
    if not (corpus / "eval.npy").exists():
        print(f"no training corpus in {corpus}: building it once (python -m steering build-corpus)", file=sys.stderr)
        build_corpus(lm.tokenizer, corpus)
    print(f"no held-out activations at layer {layer} in {folder}: harvesting {EVAL_TOKENS} tokens once "
          "(python -m steering harvest --split eval)", file=sys.stderr)
    harvest(lm.model, load_rows(corpus, "eval"), folder, layer=layer, site=site, max_tokens=EVAL_TOKENS,
            meta={"model_id": lm.model_id, "corpus": str(corpus), "split": "eval"}, progress=True)
    return folder


# ------------------------------------------------------------------ handlers
def _build_corpus(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from steering.models import resolve_model_path
    from steering.training.corpus import build_corpus

    path, _ = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    out = Path(args.out) if args.out else training_dir("corpus", "default")
    meta = build_corpus(tokenizer, out, sources=args.sources, seq_len=args.seq_len, seed=args.seed,
                        eval_fraction=args.eval_fraction, max_docs_per_source=args.max_docs_per_source)
    print(json.dumps({"out": str(out), **{s: meta["splits"][s]["tokens"] for s in meta["splits"]}}))
    return 0


def _harvest(args: argparse.Namespace) -> int:
    from steering.training.corpus import load_rows
    from steering.training.harvest import harvest

    lm = load_language_model(args)
    corpus = Path(args.corpus) if args.corpus else training_dir("corpus", "default")
    out = _acts_dir(args)
    meta = {"model_id": lm.model_id, "corpus": str(corpus)}
    for split, limit in (("eval", args.eval_tokens), ("train", args.max_tokens)):
        if args.split not in (split, "both"):
            continue
        info = harvest(lm.model, load_rows(corpus, split), out / split, layer=args.layer, site=args.site,
                       batch_size=args.batch_size, outlier_factor=args.outlier_factor, max_tokens=limit,
                       meta={**meta, "split": split})
        print(json.dumps({k: info[k] for k in ("split", "n_tokens", "harvest_tokens_per_s")}))
    return 0


def _train_sae(args: argparse.Namespace) -> int:
    import torch

    from steering.sae.formats import load_sae, save_sae
    from steering.training.report import write_report
    from steering.training.store import ActivationStore
    from steering.training.train import TrainConfig, train

    set_threads(args)
    store = ActivationStore(_acts_dir(args) / "train", max_tokens=args.max_stored_tokens)
    hmeta = store.meta or {}
    layer = int(hmeta.get("layer", args.layer))
    cfg = TrainConfig(d_sae=args.d_sae, k=args.k, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                      total_tokens=args.tokens, seed=args.seed, aux_coef=args.aux_coef, dead_tokens=args.dead_tokens,
                      warmup_steps=args.warmup_steps, checkpoint_every=args.checkpoint_every,
                      calibration_l0=args.calibration_l0, resample_tokens=args.resample_dead,
                      matryoshka=tuple(args.matryoshka))
    run = Path(args.run) if args.run else training_dir("runs", args.name)
    sae_cfg: dict[str, Any] = {"hook_layer": layer, "hook_site": hmeta.get("site", "resid_post"),
                               "model_name": hmeta.get("model_id"),
                               "metadata": {"harvest": {k: hmeta.get(k) for k in ("corpus", "outlier_factor", "n_tokens")}}}
    init_from, prior_tokens = None, 0
    if args.init_from:
        init_from = load_sae(args.init_from)
        prior = init_from.cfg.metadata.get("training", {})
        prior_tokens = int(prior.get("tokens_seen_total", prior.get("tokens_seen", 0)))
        sae_cfg["metadata"]["initialised_from"] = {"sae": str(args.init_from), "tokens_seen": prior_tokens}
    sae, trainer = train(store, run, cfg, sae_cfg=sae_cfg, max_seconds=args.max_seconds, follow=args.follow,
                         init_from=init_from)
    config = {**vars(cfg), "stored_tokens": len(store), "acts": str(store.dir), "run": str(run),
              "init_from": args.init_from}
    extra = {"train_seconds": trainer.train_seconds, "tokens_seen": trainer.tokens_seen,
             "tokens_seen_total": prior_tokens + trainer.tokens_seen, "steps": trainer.step,
             "total_steps": trainer.total_steps, "threads": torch.get_num_threads(), "resampled": trainer.resampled}
    if sae is None:
        write_report(run, config=config, log=trainer.log, harvest=hmeta, extra={**extra, "complete": False})
        print(json.dumps({"status": "paused", "step": trainer.step, "total_steps": trainer.total_steps, "run": str(run)}))
        return 0
    sae.cfg.metadata["training"]["tokens_seen_total"] = extra["tokens_seen_total"]
    save = Path(args.save) if args.save else run / "sae"
    save_sae(sae, save, dtype=torch.float16)
    write_report(run, config=config, log=trainer.log, harvest=hmeta,
                 extra={**extra, "complete": True, "threshold": float(sae.threshold.detach()[0]), "sae": str(save)},
                 title=f"{sae.describe()}")
    print(json.dumps({"status": "done", "sae": str(save), "report": str(run / "report.json")}))
    return 0


def _eval_sae(args: argparse.Namespace) -> int:
    import torch

    from steering.sae.formats import load_sae
    from steering.training.corpus import load_rows
    from steering.training.evaluate import activation_metrics, ce_losses
    from steering.training.store import ActivationStore

    sae = load_sae(args.sae or SHIPPED_SAE_DIR)
    lm = load_language_model(args)
    store = ActivationStore(_held_out(args, lm, sae.cfg.hook_layer, sae.cfg.hook_site), max_tokens=args.tokens)
    acc = activation_metrics(sae, store.slices(2048))
    result = acc.result()
    mean = None
    if not args.no_mean_ablation:
        total = acc.x_sum / acc.n
        mean = total.float()
    corpus = Path(args.corpus) if args.corpus else Path(store.meta.get("corpus", training_dir("corpus", "default")))
    rows = load_rows(corpus, "eval")
    n_rows = max(1, args.ce_tokens // rows.shape[1])
    # The CE rows are the first eval rows; harvest kept the same positions (keep_mask).
    ce = ce_losses(lm.model, sae, rows[:n_rows], batch_size=args.batch_size,
                   outlier_factor=float(store.meta.get("outlier_factor", 10.0)), mean=mean, progress=not args.json)
    out = {**result, **ce, "sae": str(args.sae or SHIPPED_SAE_DIR), "hook_layer": sae.cfg.hook_layer,
           "excluded_positions": "position 0 and positions with norm > outlier_factor x batch median are neither "
                                 "counted nor spliced", "threads": torch.get_num_threads()}
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>22}: {v}")
    if args.write:
        Path(args.write).write_text(json.dumps(out, indent=2))
    return 0


def _build_catalogue(args: argparse.Namespace) -> int:
    import torch

    from steering.sae.formats import load_sae, save_sae
    from steering.training.catalogue_builder import build_catalogue, unembedding
    from steering.training.corpus import load_rows
    from steering.training.store import ActivationStore

    sae_dir = Path(args.sae or SHIPPED_SAE_DIR)
    sae = load_sae(sae_dir)
    lm = load_language_model(args)
    store = ActivationStore(_held_out(args, lm, sae.cfg.hook_layer, sae.cfg.hook_site), max_tokens=args.tokens)
    corpus = Path(args.corpus) if args.corpus else Path(store.meta.get("corpus", training_dir("corpus", "default")))
    meta = build_catalogue(sae, store, load_rows(corpus, "eval"), lm.tokenizer, unembedding(lm.model),
                           Path(args.out) if args.out else sae_dir, n_contexts=args.contexts,
                           source=f"{len(store)} held-out tokens of {corpus}")
    if not args.no_stats:
        save_sae(sae, sae_dir, dtype=torch.float16)  # rewrite with the held-out statistics
    print(json.dumps(meta))
    return 0


def _relabel(args: argparse.Namespace) -> int:
    from steering.training.catalogue_builder import relabel

    folder = Path(args.sae or SHIPPED_SAE_DIR)
    print(json.dumps({"sae": str(folder), "kinds": relabel(folder)}))
    return 0


# ------------------------------------------------------------------ parsers
def add_parsers(subparsers: Any) -> None:
    """Register build-corpus, harvest, train-sae, eval-sae, build-catalogue, relabel-catalogue and layer-sweep."""
    p = subparsers.add_parser("build-corpus", help="assemble the offline training text into token rows")
    p.add_argument("--out", default=None, help="corpus folder (default <cache>/training/corpus/default)")
    p.add_argument("--model", default=None, help="model whose tokenizer and chat template to use")
    p.add_argument("--sources", nargs="+", default=None,
                   help="subset of: wiki chat news recipes code topics (default: all but topics)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-fraction", type=float, default=0.05)
    p.add_argument("--max-docs-per-source", type=int, default=None)
    p.set_defaults(handler=_build_corpus)

    p = subparsers.add_parser("harvest", help="store activations at one hook site (resumable)")
    p.add_argument("--corpus", default=None)
    p.add_argument("--acts", default=None, help="output folder (default <cache>/training/acts/default-l<LAYER>)")
    p.add_argument("--split", choices=("train", "eval", "both"), default="both")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--site", default="resid_post")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=5_300_000, help="train activations to store")
    p.add_argument("--eval-tokens", type=int, default=EVAL_TOKENS, help="held-out activations to store")
    p.add_argument("--outlier-factor", type=float, default=10.0)
    add_model_arguments(p)
    p.set_defaults(handler=_harvest)

    p = subparsers.add_parser("train-sae", help="train a BatchTopK SAE on harvested activations (resumable)")
    p.add_argument("--acts", default=None)
    p.add_argument("--layer", type=int, default=15, help="picks the default --acts folder")
    p.add_argument("--name", default=SHIPPED_SAE_NAME, help="run name under <cache>/training/runs")
    p.add_argument("--run", default=None, help="run folder (checkpoints, log, report)")
    p.add_argument("--save", default=None, help="where to write the SAE (default <run>/sae)")
    p.add_argument("--d-sae", type=int, default=16_384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--tokens", type=int, default=None, help="token-steps in all (overrides --epochs)")
    p.add_argument("--max-stored-tokens", type=int, default=None, help="use only the first N stored tokens")
    p.add_argument("--aux-coef", type=float, default=1 / 32)
    p.add_argument("--dead-tokens", type=int, default=200_000)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--max-seconds", type=float, default=None, help="pause after a checkpoint past this time")
    p.add_argument("--follow", action="store_true",
                   help="train while a harvest is still writing: sample stored tokens with replacement (needs --tokens)")
    p.add_argument("--init-from", default=None,
                   help="warm-start a new run from this SAE (folder): same features, fresh optimiser and schedule")
    p.add_argument("--resample-dead", type=int, default=0, metavar="TOKENS",
                   help="with --init-from: re-initialise features that never fire on this many training tokens")
    p.add_argument("--calibration-l0", type=float, default=None,
                   help="mean L0 the exported threshold is set for on training batches (default: k)")
    p.add_argument("--matryoshka", type=_sizes, default=(), metavar="M1,M2,...",
                   help="Matryoshka prefix sizes below --d-sae (e.g. 1024,4096): each prefix of the dictionary "
                        "is also trained to reconstruct alone")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(handler=_train_sae)

    p = subparsers.add_parser("eval-sae", help="held-out metrics of an SAE (L0, variance explained, delta CE...)")
    p.add_argument("--acts", default=None, help="activation folder with eval/ (default <cache>/training/acts/default-l<LAYER>)")
    p.add_argument("--layer", type=int, default=None, help="picks the default --acts folder (default: the SAE's layer)")
    p.add_argument("--corpus", default=None)
    p.add_argument("--tokens", type=int, default=None, help="held-out activations for L0 / VE / dead (default all)")
    # 8,192 tokens gave 0.082 nats where 65,536 gave 0.063 for the same SAE: the CE needs the bigger sample.
    p.add_argument("--ce-tokens", type=int, default=65_536, help="held-out tokens for the CE losses")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-mean-ablation", action="store_true", help="skip the mean-ablation CE (one forward less)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--write", default=None, help="also write the JSON to this file")
    add_model_arguments(p)
    p.set_defaults(handler=_eval_sae)

    p = subparsers.add_parser("build-catalogue", help="feature catalogue from held-out activations")
    p.add_argument("--acts", default=None)
    p.add_argument("--layer", type=int, default=None, help="picks the default --acts folder (default: the SAE's layer)")
    p.add_argument("--corpus", default=None)
    p.add_argument("--tokens", type=int, default=None)
    p.add_argument("--contexts", type=int, default=20)
    p.add_argument("--out", default=None, help="default: the SAE folder")
    p.add_argument("--no-stats", action="store_true", help="do not rewrite the SAE's feature statistics")
    add_model_arguments(p)
    p.set_defaults(handler=_build_catalogue)

    p = subparsers.add_parser("relabel-catalogue", help="recompute an SAE's feature labels from its stored "
                              "catalogue (no model, no activations)")
    p.add_argument("--sae", default=None, help="SAE folder with a catalogue (default: the shipped SAE)")
    p.set_defaults(handler=_relabel)

    p = subparsers.add_parser("layer-sweep", help="a small SAE per candidate layer: reconstruction and concept scores")
    p.add_argument("--layers", type=int, nargs="+", required=True)
    p.add_argument("--corpus", default=None)
    p.add_argument("--work", default=None, help="folder for activations and runs (default <cache>/training/layer-sweep/default)")
    p.add_argument("--train-tokens", type=int, default=200_000)
    p.add_argument("--eval-tokens", type=int, default=30_000)
    p.add_argument("--ce-tokens", type=int, default=16_384)
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--token-steps", type=int, default=400_000)
    p.add_argument("--batch-size", type=int, default=1024, help="training batch (tokens)")
    p.add_argument("--concepts", nargs="+", default=None, help="probe concepts (default: eight of different kinds)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--write", default=None, help="also write the JSON to this file")
    add_model_arguments(p)
    p.set_defaults(handler=_layer_sweep)


def _layer_sweep(args: argparse.Namespace) -> int:
    import torch

    from steering.training.corpus import load_rows
    from steering.training.layer_sweep import PROBE_CONCEPTS, SweepBudget, layer_sweep
    from steering.training.train import TrainConfig

    loaded = load_language_model(args)
    corpus = Path(args.corpus) if args.corpus else training_dir("corpus", "default")
    budget = SweepBudget(train_tokens=args.train_tokens, eval_tokens=args.eval_tokens, ce_tokens=args.ce_tokens,
                         train=TrainConfig(d_sae=args.d_sae, k=args.k, total_tokens=args.token_steps,
                                           batch_size=args.batch_size))
    work = Path(args.work) if args.work else training_dir("layer-sweep", "default")
    table = layer_sweep(loaded, load_rows(corpus, "train"), load_rows(corpus, "eval"), args.layers, work, budget,
                        args.concepts or PROBE_CONCEPTS, progress=not args.json)
    out = {"layers": table, "budget": dataclasses.asdict(budget), "threads": torch.get_num_threads()}
    if not args.json:
        print(f"{'layer':>5} {'L0':>6} {'VE':>7} {'dCE':>7} {'dead':>6} {'concept':>8}")
        for r in table:
            print(f"{r['layer']:>5} {r['l0']:>6.1f} {r['variance_explained']:>7.3f} {r['delta_ce']:>7.3f} "
                  f"{r['dead_fraction']:>6.3f} {r['concept_score']:>8.3f}")
    print(json.dumps(out))
    if args.write:
        Path(args.write).write_text(json.dumps(out, indent=2))
    return 0
