"""A chat model with its SAE: the object a notebook user or the server loads.

    sm = SteeredModel.load()                       # embedded default model + SAE
    spec = SteeringSpec((FeatureClamp(123, 10.0),))
    print(sm.chat([{"role": "user", "content": "Hi"}], spec, seed=0))

The default SAE is the one shipped in `steering/data/saes/` for the default
model. Where none is shipped for the model, a seeded randomly initialised
placeholder (ReLU, attached to the middle layer) stands in, with feature
statistics measured on a short built-in text so that the `max` unit works;
`sae_note` says so, and every front end shows that note.

A SteeredModel knows the folder its SAE was read from (`sae_dir`) and finds
the feature catalogue stored there once (`catalogue`, None without one):
the server, auto-steer and the commands all take it from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from steering.chat_template import render_chat
from steering.engine.generation import SequenceRequest, TokenEvent, generate_batch
from steering.engine.sampling import SamplingParams
from steering.hooks import layer_device
from steering.interventions import SteeringSpec
from steering.models import DEFAULT_MODEL, LoadedModel, load_model
from steering.feature_stats import ensure_max_activations, measure_stats
from steering.sae.hub import resolve_sae_path
from steering.sae.autoencoder import SAEConfig, SparseAutoencoder
from steering.sae.catalogue import Catalogue

SHIPPED_SAES = Path(__file__).parent / "data" / "saes"
PLACEHOLDER_D_SAE = 16384
PLACEHOLDER_SEED = 0
_CALIBRATION_TEXT = (
    "The Golden Gate Bridge is a suspension bridge in San Francisco. "
    "My dog loves to play fetch in the park on sunny days. "
    "def add(a, b):\n    return a + b\n"
    "I feel so happy today, thank you for asking! "
    "Preheat the oven and mix the flour with sugar and eggs. "
    "The stock market fell sharply after the announcement in London."
)


def shipped_sae_dirs(model_id: str) -> list[Path]:
    """The shipped SAE folders whose cfg.json names this model, widest dictionary first (then by name)."""
    if not SHIPPED_SAES.is_dir():
        return []
    found = []
    for cfg_path in sorted(SHIPPED_SAES.glob("*/cfg.json")):
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if cfg.get("model_name") == model_id:
            found.append((-int(cfg.get("d_sae", 0)), cfg_path.parent.name, cfg_path.parent))
    return [folder for *_, folder in sorted(found)]


def shipped_sae_dir(model_id: str) -> Path | None:
    """The default SAE of this model: the widest shipped one (the small ones at other layers serve
    attribution graphs), if any."""
    folders = shipped_sae_dirs(model_id)
    return folders[0] if folders else None


def placeholder_sae(loaded: LoadedModel, seed: int = PLACEHOLDER_SEED) -> SparseAutoencoder:
    """A seeded random ReLU SAE at the middle layer, with statistics from a short text."""
    config = loaded.model.config
    n_layers = config.num_hidden_layers
    cfg = SAEConfig(
        d_in=config.hidden_size,
        d_sae=PLACEHOLDER_D_SAE,
        architecture="relu",
        hook_layer=n_layers // 2,
        hook_site="resid_post",
        model_name=loaded.model_id,
        metadata={"placeholder": True, "seed": seed},
    )
    sae = SparseAutoencoder.random(cfg, seed=seed).requires_grad_(False).to(layer_device(loaded.model, cfg.hook_layer))
    max_activation, frequency, _ = measure_stats(loaded.model, loaded.tokenizer, sae, [_CALIBRATION_TEXT])
    sae.set_feature_stats(max_activation.nan_to_num(1e-3).clamp(min=1e-3), frequency)  # every feature gets a scale
    return sae


@dataclass
class SteeredModel:
    """A loaded model, its tokenizer and (optionally) an SAE attached to one layer.

    `sae_dir`: the folder the SAE was read from (None for the placeholder, or
    an SAE built in memory); `catalogue`: its feature catalogue, found there
    at construction unless one is given.
    """

    loaded: LoadedModel
    sae: SparseAutoencoder | None
    sae_id: str
    sae_note: str | None = None
    sae_dir: Path | None = None
    catalogue: Catalogue | None = field(default=None, repr=False)
    # Where a clamp's `max` unit gets its scale: "sae" (the SAE's own statistics) or the estimate
    # `steering.feature_stats` made for an SAE that ships none.
    max_unit_source: str = "sae"
    # The SAEs attribution graphs run through (`steering.attribution.graph_layers` fills it at first use).
    graph_saes: list | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.catalogue is None and self.sae is not None and self.sae_dir is not None:
            self.catalogue = Catalogue.find(self.sae_dir, self.sae.d_sae)

    @classmethod
    def load(
        cls,
        model: str | None = None,
        sae: str | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        device_map: str | None = None,
    ) -> "SteeredModel":
        """Load a model and an SAE.

        sae: None or "default" (the shipped SAE for this model, else the random
        placeholder), "none" (no SAE: steering is unavailable), a path any
        `steering.sae.formats.load_sae` format accepts, or a Hugging Face name
        `org/repo/path` cached locally (`steering.sae.hub`). device_map (e.g.
        "auto") spreads a model larger than one GPU over several; the SAE goes
        to its hook layer's device.
        """
        from steering.sae.formats import load_sae

        loaded = load_model(model, device=device, dtype=dtype, device_map=device_map)
        if sae == "none":
            return cls(loaded, None, "none", "no SAE loaded: steering is unavailable")
        if sae in (None, "default"):
            shipped = shipped_sae_dir(loaded.model_id)
            if shipped is None:
                note = (
                    f"using a randomly initialised placeholder SAE (seed {PLACEHOLDER_SEED}): "
                    "no trained SAE ships for this model yet, so features are not interpretable"
                )
                return cls(loaded, placeholder_sae(loaded), "placeholder-random", note)
            sae_path: str | Path = shipped
        else:
            sae_path = sae
        sae_path = resolve_sae_path(sae_path)
        module = load_sae(sae_path, device=loaded.device).eval().requires_grad_(False)
        module = module.to(layer_device(loaded.model, module.cfg.hook_layer))
        folder = Path(sae_path)
        folder = folder.parent if folder.is_file() else folder  # a cfg.json or .npz path: its folder
        estimated = ensure_max_activations(loaded.model, loaded.tokenizer, module, folder, loaded.model_id)
        return cls(loaded, module, Path(sae_path).name, sae_dir=folder,
                   max_unit_source=estimated.describe() if estimated is not None else "sae")

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    @property
    def context_length(self) -> int:
        return int(getattr(self.loaded.model.config, "max_position_embeddings", 2048))

    def prompt_ids(self, messages: Sequence[dict[str, str]]) -> tuple[int, ...]:
        return tuple(render_chat(self.loaded.tokenizer, list(messages)))

    def stream(self, requests: Sequence[SequenceRequest]) -> Iterator[list[TokenEvent]]:
        """generate_batch over this model and SAE."""
        return generate_batch(self.loaded.model, self.loaded.tokenizer, self.sae, requests)

    def chat(
        self,
        messages: Sequence[dict[str, str]],
        steering: SteeringSpec | None = None,
        *,
        max_tokens: int = 64,
        temperature: float = 0.7,
        top_p: float = 1.0,
        seed: int | None = 0,
        compare: bool = False,
    ) -> list[str]:
        """Answer one chat; with compare, [steered, unsteered] from the same seed."""
        ids = self.prompt_ids(messages)
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
        requests = [SequenceRequest(ids, params, steering)]
        if compare:
            requests.append(SequenceRequest(ids, params, None))
        texts = [""] * len(requests)
        for events in self.stream(requests):
            for event in events:
                texts[event.index] += event.text
        return texts


__all__ = ["SteeredModel", "shipped_sae_dir", "shipped_sae_dirs", "placeholder_sae", "DEFAULT_MODEL"]
