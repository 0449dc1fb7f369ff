"""Steer a Hugging Face chat model by clamping the features of a sparse autoencoder (SAE).

    from steering import FeatureClamp, SteeredModel, SteeringSpec

    sm = SteeredModel.load()                      # embedded default model + its SAE
    spec = SteeringSpec((FeatureClamp(123, 10.0),))
    steered, plain = sm.chat([{"role": "user", "content": "Hi"}], spec, seed=0, compare=True)

The library knows nothing of HTTP (the server is the `api` package). Its rooms:

    steered_model   SteeredModel: a model, its SAE, the SAE's folder and catalogue
    models          offline model loading (the embedded default's GGUF converted once)
    chat_template   chat messages to prompt ids
    interventions   clamp specs (one table of modes, units, positions) and the per-row clamp math
    hooks           forward hooks, only through context managers
    presets         the one reader of preset files, and a folder of them
    readings        what is read per token (InspectSpec, the readout); monitors: features watched while generating
    tokens          the bytes of each token
    errors          ParameterError, the base of every error that names a parameter
    sae/            the SAE module, its file formats, the feature catalogue
    engine/         continuously batched, per-row steered generation
    concepts/       concept search, the generation probe, auto-steer
    inspection/     reading existing text: per-token features, contrast
    evaluation/     does a spec steer: concept rate and fluency, sweeps
    training/       dictionary learning: corpus, harvest, train, evaluate, catalogue
    cli/            the commands (`python -m steering --help`)
"""

from steering.errors import ParameterError, SteeringError
from steering.interventions import FeatureClamp, SteeringSpec
from steering.steered_model import SteeredModel

__all__ = ["FeatureClamp", "ParameterError", "SteeredModel", "SteeringError", "SteeringSpec"]
