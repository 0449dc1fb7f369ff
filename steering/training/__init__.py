"""Dictionary learning for the steering library: corpus, harvest, train, evaluate, catalogue.

The pipeline, one module per step:

    corpus             offline text -> packed token sequences (train / held-out split)
    harvest            token sequences -> activations at the hook site, on disk (float16)
    store              chunked, memory-mapped activation files and their shuffled reader
    sparse_step        one BatchTopK training step
    train              activations -> a BatchTopK SAE (saved in the SAELens layout)
    evaluate           held-out metrics: L0, variance explained, delta CE, dead/dense
    catalogue_builder  per-feature contexts, logit effects, labels, neighbours
    report             training report JSON and PNG plots
    layer_sweep        a small SAE per candidate layer, to choose the layer
    topic_text         corpus text the model writes about what the offline text lacks
    extension          new features for a trained SAE, trained on its error (the old ones unchanged)

Big data (corpora, activations, checkpoints) lives under the cache directory
(`steering.models.default_cache_dir()`: $STEERING_CACHE, else
$XDG_CACHE_HOME/sae-steering, else ~/.cache/sae-steering), never in the
repository. The commands are in `steering.cli.training` and `steering.cli.extension`. Nothing here is
imported by the server; `steering.sae.catalogue` loads a built
catalogue without torch models.
"""

from __future__ import annotations

from pathlib import Path

from steering.models import default_cache_dir


def training_dir(*parts: str) -> Path:
    """A folder under <cache>/training (not created); <cache> is `steering.models.default_cache_dir()`."""
    return default_cache_dir().joinpath("training", *parts)
