"""Helpers for the API tests: a tiny SteeredModel (random Llama, byte tokenizer, small SAE with stats).

Imported by tests/api/test_*.py; the tiny model and tokenizer come from
conftest.py's builders. Nothing here downloads anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import torch

from steering.hooks import capture, run_until_capture
from steering.models import LoadedModel
from steering.sae.autoencoder import SAEConfig, SparseAutoencoder
from steering.steered_model import SteeredModel

MODEL_ID = "tiny-llama"
SAE_ID = "tiny-sae"
D_SAE = 96
HOOK_LAYER = 2
CALIBRATION = "The Golden Gate Bridge is in San Francisco. My dog likes the park. def f(x): return x + 1"


def tiny_sae(model: torch.nn.Module, tokenizer: Any, seed: int = 0) -> SparseAutoencoder:
    """A seeded random ReLU SAE on layer 2 with max activation and frequency measured on a short text."""
    cfg = SAEConfig(d_in=model.config.hidden_size, d_sae=D_SAE, architecture="relu", hook_layer=HOOK_LAYER,
                    hook_site="resid_post", model_name=MODEL_ID)
    sae = SparseAutoencoder.random(cfg, seed=seed)
    ids = torch.tensor([tokenizer(CALIBRATION)["input_ids"]])
    with capture(model, cfg.hook_layer, cfg.hook_site, stop=True) as store:
        run_until_capture(model, input_ids=ids)
    acts = sae.encode(store[0][0, 1:].float())
    sae.set_feature_stats(acts.amax(0).clamp(min=1e-3), (acts > 0).float().mean(0))
    return sae.eval()


def tiny_steered_model(model: torch.nn.Module, tokenizer: Any, with_sae: bool = True) -> SteeredModel:
    loaded = LoadedModel(model=model, tokenizer=tokenizer, model_id=MODEL_ID, device=torch.device("cpu"),
                         dtype=torch.float32, path=Path("."))
    if not with_sae:
        return SteeredModel(loaded, None, "none", "no SAE loaded: steering is unavailable")
    return SteeredModel(loaded, tiny_sae(model, tokenizer), SAE_ID, "tiny random SAE for tests")


def write_preset(folder: Path, stem: str, **fields: Any) -> Path:
    """presets/STEM.json for the tiny model and SAE; `fields` override the defaults."""
    data = {"name": stem, "description": f"{stem} preset", "model": MODEL_ID, "sae": SAE_ID,
            "features": [{"index": 3, "value": 20.0}]}
    data.update(fields)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(data))
    return path


def sse_events(lines: Iterator[str]) -> list[Any]:
    """The `data:` payloads of an SSE stream, JSON-decoded ([DONE] kept as the string)."""
    out = []
    for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[len("data:"):].strip()
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def chat_body(content: str = "Hello", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL_ID, "messages": [{"role": "user", "content": content}],
                            "max_tokens": 12, "temperature": 1.0, "seed": 7}
    body.update(extra)
    return body
