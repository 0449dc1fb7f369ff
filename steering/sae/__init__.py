"""Sparse autoencoders: the module, its file formats, and the feature catalogue stored beside it.

    autoencoder  SparseAutoencoder, SAEConfig, NormInfo: encode/decode and the architectures
    formats      load_sae (SAELens, Gemma Scope, sparsify folders), save_sae (SAELens layout)
    catalogue    Catalogue: labels, top contexts, logit effects and neighbours per feature
    hub          resolve_sae_path: an `org/repo/path` name in the local Hugging Face cache, offline

This package does not know how an SAE is attached to a model (`steering.hooks`)
or which SAE a model gets by default (`steering.steered_model`).
"""

from steering.sae.autoencoder import (
    ARCHITECTURES,
    HOOK_SITES,
    NORMALIZATIONS,
    NormInfo,
    SAEConfig,
    SAEConfigError,
    SparseAutoencoder,
)
from steering.sae.catalogue import Catalogue, Context, FeatureInfo
from steering.sae.formats import FORMATS, SAEFormatError, detect_format, load_sae, save_sae
from steering.sae.hub import SAENotCachedError, resolve_sae_path

__all__ = [
    "ARCHITECTURES", "HOOK_SITES", "NORMALIZATIONS", "NormInfo", "SAEConfig", "SAEConfigError", "SparseAutoencoder",
    "Catalogue", "Context", "FeatureInfo", "FORMATS", "SAEFormatError", "detect_format", "load_sae", "save_sae",
    "SAENotCachedError", "resolve_sae_path",
]
