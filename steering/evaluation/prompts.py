"""Inputs of a steering evaluation: neutral prompts and preset files.

Prompts: a text file, one prompt a line (blank lines and '#' lines skipped);
the project's own set is steering/data/neutral_prompts.txt (no animals,
places, food, emotions, pirates, sports or code).

Presets: JSON files (presets/NAME.json: name, description, model, sae,
features [{index, value, mode, unit}], positions, generated_limit, system_prompt,
concept_words, notes). This loader is lenient: it reads the fields the
evaluation needs (and an optional `concept_features` list of indices judged
on answers) and ignores the rest. The server validates presets strictly with
its own schema; `steering` never imports `api`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steering.interventions import FeatureClamp, SteeringError, SteeringSpec

NEUTRAL_PROMPTS = Path(__file__).resolve().parent.parent / "data" / "neutral_prompts.txt"


def load_prompts(path: str | Path | None = None) -> list[str]:
    """Prompts from a text file (one a line; blank and '#' lines skipped), default the shipped neutral set."""
    path = Path(path) if path is not None else NEUTRAL_PROMPTS
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    prompts = [ln for ln in lines if ln and not ln.startswith("#")]
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts


# ----------------------------------------------------------------- presets
@dataclass(frozen=True)
class EvalPreset:
    """The parts of a preset file the evaluation needs."""

    name: str
    spec: SteeringSpec
    concept_words: tuple[str, ...] = ()
    concept_features: tuple[int, ...] | None = None
    system_prompt: str | None = None
    model: str | None = None
    sae: str | None = None
    path: Path | None = None


def load_preset(name_or_path: str | Path, presets_dir: str | Path = "presets") -> EvalPreset:
    """Read a preset by file path, or by name from `presets_dir/NAME.json`."""
    path = Path(name_or_path)
    if not path.is_file():
        path = Path(presets_dir) / f"{name_or_path}.json"
    if not path.is_file():
        raise SteeringError(f"no preset file {name_or_path!r} (nor {path})", "preset")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        clamps = tuple(
            FeatureClamp(int(f["index"]), float(f["value"]), f.get("mode", "clamp"), f.get("unit", "max"))
            for f in data["features"]
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SteeringError(f"preset {path} is malformed: {exc!r}", "preset") from None
    cf = data.get("concept_features")
    return EvalPreset(
        name=str(data.get("name", path.stem)),
        spec=SteeringSpec(clamps, data.get("positions", "all"), data.get("generated_limit")),
        concept_words=tuple(data.get("concept_words") or ()),
        concept_features=tuple(int(i) for i in cf) if cf is not None else None,
        system_prompt=data.get("system_prompt"),
        model=data.get("model"),
        sae=data.get("sae"),
        path=path,
    )


def scaled_spec(spec: SteeringSpec, multiplier: float) -> SteeringSpec:
    """Every clamp's value times `multiplier` (whatever its mode or unit)."""
    clamps = tuple(dataclasses.replace(c, value=c.value * multiplier) for c in spec.features)
    return SteeringSpec(clamps, spec.positions, spec.generated_limit)


def spec_to_dict(spec: SteeringSpec) -> dict[str, Any]:
    return {"features": [dataclasses.asdict(c) for c in spec.features], "positions": spec.positions,
            "generated_limit": spec.generated_limit}
