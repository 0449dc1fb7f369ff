"""Dictionary learning for the steering library: corpus, harvest, train, evaluate, catalogue.

The pipeline, one module per step:

    corpus     offline text -> packed token sequences (train / held-out split)
    harvest    token sequences -> activations at the hook site, on disk (float16)
    store      chunked, memory-mapped activation files and their shuffled reader
    train      activations -> a BatchTopK SAE (saved in the SAELens layout)
    evaluate   held-out metrics: L0, variance explained, delta CE, dead/dense
    catalogue  per-feature contexts, logit effects, labels, neighbours
    report     training report JSON and PNG plots
    cli        the `build-corpus`, `harvest`, `train-sae`, `eval-sae` and
               `build-catalogue` subcommands

Big data (corpora, activations, checkpoints) lives under the cache directory
(`$STEERING_CACHE`, else ~/.cache/sae-steering), never in the repository.
Nothing here is imported by the server; `steering.sae.catalogue` loads a built
catalogue without torch models.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$STEERING_CACHE, else ~/.cache/sae-steering."""
    env = os.environ.get("STEERING_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sae-steering"


def training_dir(*parts: str) -> Path:
    """A folder under <cache>/training (not created)."""
    return cache_root().joinpath("training", *parts)
