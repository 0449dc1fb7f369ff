"""`python -m steering` commands that grow a trained dictionary (`steering.training.extension`).

    write-topic-text  the model's own answers to questions about a topic, as corpus documents
    extend-sae        new features for a trained SAE, trained on what it leaves unexplained

The commands behind the runs made so far: steering/data/corpus/README.md and docs/research/dictionary.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from steering.cli.common import add_model_arguments, load_language_model
from steering.cli.training import SHIPPED_SAE_DIR


def _write_topic_text(args: argparse.Namespace) -> int:
    from steering.training.topic_text import read_questions, write_topic_answers

    lm = load_language_model(args)
    result = write_topic_answers(lm.model, lm.tokenizer, read_questions(args.questions), args.out,
                                 samples=args.samples, max_tokens=args.max_tokens, temperature=args.temperature,
                                 seed=args.seed, batch_size=args.batch_size, system=args.system)
    print(json.dumps(result))
    return 0


def _extend_sae(args: argparse.Namespace) -> int:
    import shutil

    import torch

    from steering.sae.formats import load_sae, save_sae
    from steering.training.catalogue_builder import extend_catalogue, unembedding
    from steering.training.corpus import load_rows
    from steering.training.extension import ExtensionConfig, base_errors, grown_sae, train_extension
    from steering.training.store import ActivationStore

    base_dir = Path(args.sae) if args.sae else SHIPPED_SAE_DIR  # --sae: the SAE folder to grow
    base = load_sae(base_dir)
    out = Path(args.out)
    if out.resolve() != base_dir.resolve():
        shutil.copytree(base_dir, out, dirs_exist_ok=True)
    cfg = ExtensionConfig(n_features=args.n_features, k=args.k, lr=args.lr, batch_size=args.batch_size,
                          epochs=args.epochs, seed=args.seed)
    stores = [ActivationStore(folder, max_tokens=args.max_tokens) for folder in args.acts]
    h, e, counts = base_errors(base, stores)
    ext = train_extension(h, e, cfg)
    del h, e
    meta = {"extension": {"start": base.d_sae, "n_features": cfg.n_features, "k": cfg.k,
                          "train_tokens": dict(zip(map(str, args.acts), counts))}}
    grown = grown_sae(base, ext, meta)
    lm = load_language_model(args)
    held_out = []
    for folder in args.held_out:
        store = ActivationStore(folder)
        held_out.append((store, load_rows(store.meta["corpus"], "eval")))
    counts_cat = extend_catalogue(out, grown, base.d_sae, held_out, lm.tokenizer, unembedding(lm.model))
    save_sae(grown, out, dtype=torch.float16)
    report = {"config": ext["config"], "threshold": ext["threshold"], "steps": ext["steps"], "tokens": ext["tokens"],
              "train_seconds": ext["train_seconds"], "train_tokens": meta["extension"]["train_tokens"],
              "catalogue": counts_cat, "log": ext["log"], "threads": torch.get_num_threads()}
    (out / "extension_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "log"}))
    return 0


def add_parsers(subparsers: Any) -> None:
    """Register write-topic-text and extend-sae."""
    p = subparsers.add_parser("write-topic-text", help="the model's answers to questions about a topic (JSON lines), "
                              "for the training corpus")
    p.add_argument("--questions", required=True, help="a text file, one question per line")
    p.add_argument("--out", required=True, help="the JSON-lines file to write")
    p.add_argument("--samples", type=int, default=6, help="answers per question")
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--system", default=None, help="a system prompt for the generation (not stored in the corpus)")
    add_model_arguments(p)
    p.set_defaults(handler=_write_topic_text)

    p = subparsers.add_parser("extend-sae", help="append features trained on a trained SAE's error (the old ones "
                              "unchanged) and catalogue them")
    p.add_argument("--out", required=True, help="the grown SAE's folder (the base's files are copied there first; "
                   "the base's own folder grows in place)")
    p.add_argument("--acts", nargs="+", required=True, help="harvested training activations, one or more folders "
                   "(mixed: every token of each, up to --max-tokens)")
    p.add_argument("--held-out", nargs="+", required=True, help="held-out activation folders for the new "
                   "features' contexts and statistics")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens read from each --acts folder")
    p.add_argument("--n-features", type=int, default=512)
    p.add_argument("--k", type=float, default=2.0, help="new features per token on average")
    p.add_argument("--epochs", type=float, default=8.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    add_model_arguments(p)
    p.set_defaults(handler=_extend_sae)
