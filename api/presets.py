"""Steering presets: JSON files in a folder, validated once at start-up.

A preset (`presets/NAME.json`, format in presets/README.md and
`api.protocol.Preset`) names the model and SAE its feature indices belong to.
At start-up every `*.json` file is read:

- a file that is not valid JSON, misses a field, has an unknown field or a
  value out of bounds, or repeats another preset's name, stops start-up with
  a `PresetError` naming the file and the field;
- a preset for another model or SAE than the loaded ones is kept but marked
  unavailable (listed with `available: false` and the reason, logged once);
  a request naming it gets a 400. Feature indices mean nothing across SAEs,
  so such a preset is never applied;
- a preset for the loaded model and SAE is checked against the SAE (feature
  and `concept_features` indices in range, known max activation for `max`
  units); a failure stops start-up.

`concept_words`, `concept_features` and `efficacy` (the measured record) are
for evaluation and for people: listed by GET /v1/presets, never applied.

This module knows nothing of HTTP beyond the protocol's Preset model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from api.protocol import Preset, PresetInfo
from steering.interventions import FeatureClamp, SteeringError, SteeringSpec
from steering.sae.autoencoder import SparseAutoencoder

log = logging.getLogger(__name__)


class PresetError(ValueError):
    """A broken preset file; the message names the file and the field."""

    def __init__(self, path: Path, field: str | None, message: str):
        where = f"{path}: field '{field}'" if field else str(path)
        super().__init__(f"invalid preset {where}: {message}")
        self.path = path
        self.field = field


@dataclass(frozen=True)
class PresetEntry:
    preset: Preset
    path: Path
    available: bool
    reason: str | None = None

    def spec(self) -> SteeringSpec:
        p = self.preset
        clamps = tuple(FeatureClamp(f.index, f.value, f.mode, f.unit) for f in p.features)
        return SteeringSpec(features=clamps, positions=p.positions, generated_limit=p.generated_limit)

    def info(self) -> PresetInfo:
        return PresetInfo(**self.preset.model_dump(), available=self.available, unavailable_reason=self.reason)


def _loc(loc: tuple) -> str:
    if loc and loc[0] == "efficacy":  # the key, not the JSON-value union tags pydantic adds below it
        loc = loc[:2]
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read_preset(path: Path) -> Preset:
    """Parse and validate one file (schema only); raises PresetError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise PresetError(path, None, f"cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise PresetError(path, None, f"not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise PresetError(path, None, "must hold a JSON object")
    try:
        return Preset.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        raise PresetError(path, _loc(tuple(err["loc"])) or None, msg) from None


def check_files(directory: Path | None) -> int:
    """Schema-check every preset file in `directory` (none if it is missing); raises PresetError."""
    if directory is None or not Path(directory).is_dir():
        return 0
    paths = sorted(Path(directory).glob("*.json"))
    for path in paths:
        read_preset(path)
    return len(paths)


class PresetRegistry:
    """The presets of one server, by name."""

    def __init__(self, entries: list[PresetEntry] | None = None):
        self._entries = {e.preset.name: e for e in entries or []}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> PresetEntry | None:
        return self._entries.get(name)

    def all(self) -> list[PresetEntry]:
        return [self._entries[k] for k in sorted(self._entries)]

    @classmethod
    def load(
        cls,
        directory: Path | None,
        model_id: str,
        sae_id: str,
        sae: SparseAutoencoder | None,
    ) -> "PresetRegistry":
        """Read every *.json in `directory` (a missing folder means no presets)."""
        if directory is None or not Path(directory).is_dir():
            if directory is not None:
                log.info("no presets folder at %s", directory)
            return cls()
        entries: list[PresetEntry] = []
        seen: dict[str, Path] = {}
        for path in sorted(Path(directory).glob("*.json")):
            preset = read_preset(path)
            if preset.name in seen:
                raise PresetError(path, "name", f"{preset.name!r} is already defined by {seen[preset.name]}")
            seen[preset.name] = path
            entries.append(_check_target(path, preset, model_id, sae_id, sae))
        usable = sum(e.available for e in entries)
        log.info("presets: %d loaded from %s, %d usable with %s / %s", len(entries), directory, usable, model_id, sae_id)
        return cls(entries)


def _check_target(path: Path, preset: Preset, model_id: str, sae_id: str, sae: SparseAutoencoder | None) -> PresetEntry:
    if preset.model != model_id:
        reason = f"made for model {preset.model!r}; this server runs {model_id!r}"
    elif sae is None:
        reason = "this server runs without an SAE"
    elif preset.sae != sae_id:
        reason = f"made for SAE {preset.sae!r}; this server runs {sae_id!r}"
    else:
        entry = PresetEntry(preset, path, True)
        try:
            entry.spec().validate(sae)
        except SteeringError as e:
            raise PresetError(path, e.param, str(e)) from None
        for k, index in enumerate(preset.concept_features or ()):
            if index >= sae.d_sae:
                raise PresetError(path, f"concept_features[{k}]",
                                  f"feature {index} does not exist: this SAE has {sae.d_sae} features")
        return entry
    log.warning("preset %r (%s) is unavailable: %s", preset.name, path, reason)
    return PresetEntry(preset, path, False, reason)
