"""Steering presets: the one reader of preset files, and a folder of them checked against a model and SAE.

A preset (`presets/NAME.json`; the format is presets/README.md) names the
model and SAE its feature indices belong to, its clamps and their window,
and what it is for:

    name, description, model, sae       who it is and what it was made for
    features [{index, value, mode, unit, label}], positions, generated_limit
    system_prompt                        prepended when a chat has none
    concept_words, concept_features      how the evaluation judges its answers
    goal, prompt_set, compare_prompt     what the evaluation expects: `steer` (bring the concept into
                                         answers to neutral prompts) or `suppress` (keep it out of
                                         answers to prompts about it, prompt set `NAME`); the system
                                         prompt that asks for the same in words (the prompting baseline)
    monitors [{index, threshold, unit, action, name}]   features watched while it generates
    efficacy                             the measured record (free-form JSON)
    notes                                what it does and why, for people

`read_preset(path)` checks every field (types, strictly: an index is a
JSON integer, a value a JSON number, not a string or a boolean; bounds;
unknown keys; a contradictory window) and
raises a `PresetError` that names the file and the field in the notation a
person reads (`features[0].value`, `efficacy.delta_loss`). The clamp
vocabulary and bounds come from `steering.interventions`. With `draft=True`
(the evaluation commands, run on presets being made) `name` defaults to the
file's stem and `description`, `model` and `sae` may be missing; every field
that is present is checked the same way.

`PresetRegistry.load(folder, model_id, sae_id, sae)` reads a folder's
`*.json` files for a server: a preset for another model or SAE is kept but
unavailable (with the reason), since feature indices mean nothing across
SAEs; one for the loaded model and SAE is checked against the SAE (indices
in range, known max activations for `max` units). Duplicate names and broken
files raise.

This module knows nothing of HTTP; the server only turns these values into
its wire schema.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steering.errors import SteeringError
from steering.interventions import (
    CLAMP_MODES,
    CLAMP_UNITS,
    MAX_CLAMP_VALUE,
    MAX_CLAMPS,
    MAX_GENERATED_LIMIT,
    POSITIONS,
    FeatureClamp,
    SteeringSpec,
)
from steering.monitors import MAX_MONITORS, MONITOR_ACTIONS, Monitor, validate_monitors
from steering.sae.autoencoder import SparseAutoencoder

log = logging.getLogger(__name__)

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"  # the whole name (re.fullmatch)
# Keys of the efficacy record that are shares in [0, 1] when present (presets/README.md).
EFFICACY_RATES = frozenset({"concept_rate", "baseline_concept_rate", "word_rate", "baseline_word_rate",
                            "feature_rate", "baseline_feature_rate", "repeated_4gram", "baseline_repeated_4gram",
                            "unchanged_rate", "triggered_rate"})
_FIELDS = ("name", "description", "model", "sae", "features", "positions", "generated_limit", "system_prompt",
           "concept_words", "concept_features", "goal", "prompt_set", "compare_prompt", "monitors", "efficacy",
           "notes")
GOALS = ("steer", "suppress")  # bring the concept into answers / keep it out of answers about it
_MONITOR_FIELDS = ("index", "threshold", "unit", "action", "name", "clamps", "duration")
_FEATURE_FIELDS = ("index", "value", "mode", "unit", "label")
_DRAFT_OPTIONAL = ("description", "model", "sae")


class PresetError(SteeringError):
    """A missing or broken preset file; the message names the file and the field (`field`)."""

    def __init__(self, path: Path, field: str | None, message: str):
        where = f"{path}: field '{field}'" if field else str(path)
        super().__init__(f"invalid preset {where}: {message}", "preset")
        self.path = path
        self.field = field


@dataclass(frozen=True)
class PresetFeature(FeatureClamp):
    """A preset's clamp and its label (a note for people; the engine never reads it)."""

    label: str | None = None

    @property
    def clamp(self) -> FeatureClamp:
        return FeatureClamp(self.index, self.value, self.mode, self.unit)


@dataclass(frozen=True)
class Preset:
    """One preset file, checked (see the module docstring)."""

    name: str
    features: tuple[PresetFeature, ...]
    description: str | None = None
    model: str | None = None
    sae: str | None = None
    positions: str = "all"
    generated_limit: int | None = None
    system_prompt: str | None = None
    concept_words: tuple[str, ...] = ()
    concept_features: tuple[int, ...] | None = None
    goal: str = "steer"
    prompt_set: str = "neutral"
    compare_prompt: str | None = None
    monitors: tuple[Monitor, ...] = ()
    efficacy: dict[str, Any] | None = None
    notes: str | None = None
    path: Path | None = None

    @property
    def spec(self) -> SteeringSpec:
        """The clamps and window a request applies."""
        return SteeringSpec(tuple(f.clamp for f in self.features), self.positions, self.generated_limit)


class _Invalid(Exception):
    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _text(data: dict, key: str, required: bool) -> str | None:
    v = data.get(key)
    if v is None:
        if required:
            raise _Invalid(key, "field required" if key not in data else "must be a string")
        return None
    if not isinstance(v, str):
        raise _Invalid(key, "must be a string")
    return v


def _object(item: Any, at: str, fields: tuple[str, ...], required: tuple[str, ...]) -> int:
    """An object with only `fields`, the `required` ones present, and a feature `index` >= 0 (returned)."""
    if not isinstance(item, dict):
        raise _Invalid(at, "must be an object {" + ", ".join(fields) + "}")
    for key in item:
        if key not in fields:
            raise _Invalid(f"{at}.{key}", "unknown field")
    for key in required:
        if key not in item:
            raise _Invalid(f"{at}.{key}", "field required")
    index = item["index"]
    if not _is_int(index) or index < 0:
        raise _Invalid(f"{at}.index", "must be an integer >= 0")
    return index


def _feature(item: Any, at: str) -> PresetFeature:
    index = _object(item, at, _FEATURE_FIELDS, ("index", "value"))
    value = item["value"]
    if not _is_number(value) or not math.isfinite(value) or abs(value) > MAX_CLAMP_VALUE:
        raise _Invalid(f"{at}.value", f"must be a finite number with |value| <= {MAX_CLAMP_VALUE:g}")
    mode, unit = item.get("mode", "clamp"), item.get("unit", "max")
    if not isinstance(mode, str) or mode not in CLAMP_MODES:
        raise _Invalid(f"{at}.mode", f"must be one of {', '.join(CLAMP_MODES)}")
    if not isinstance(unit, str) or unit not in CLAMP_UNITS:
        raise _Invalid(f"{at}.unit", f"must be one of {', '.join(CLAMP_UNITS)}")
    label = item.get("label")
    if label is not None and not isinstance(label, str):
        raise _Invalid(f"{at}.label", "must be a string")
    return PresetFeature(index, float(value), mode, unit, label)


def _monitor(item: Any, at: str) -> Monitor:
    """Types and vocabulary here; indices, thresholds and max activations against the SAE (`check_against`)."""
    index = _object(item, at, _MONITOR_FIELDS, ("index", "threshold"))
    threshold = item["threshold"]
    if not _is_number(threshold) or not math.isfinite(threshold) or threshold <= 0:
        raise _Invalid(f"{at}.threshold", "must be a finite number > 0")
    unit, action, name = item.get("unit", "max"), item.get("action", "flag"), item.get("name")
    if not isinstance(unit, str) or unit not in CLAMP_UNITS:
        raise _Invalid(f"{at}.unit", f"must be one of {', '.join(CLAMP_UNITS)}")
    if not isinstance(action, str) or action not in MONITOR_ACTIONS:
        raise _Invalid(f"{at}.action", f"must be one of {', '.join(MONITOR_ACTIONS)}")
    if name is not None and not isinstance(name, str):
        raise _Invalid(f"{at}.name", "must be a string")
    clamps = item.get("clamps", [])
    if not isinstance(clamps, list) or len(clamps) > MAX_CLAMPS:
        raise _Invalid(f"{at}.clamps", f"must list at most {MAX_CLAMPS} clamps")
    duration = item.get("duration")
    if duration is not None and (not _is_int(duration) or not 0 < duration <= MAX_GENERATED_LIMIT):
        raise _Invalid(f"{at}.duration", f"must be an integer in [1, {MAX_GENERATED_LIMIT}] or null")
    return Monitor(index, float(threshold), unit, action, name,
                   tuple(_feature(c, f"{at}.clamps[{k}]").clamp for k, c in enumerate(clamps)), duration)


def _finite_json(v: Any, at: str) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise _Invalid(at, "NaN and infinite numbers are not JSON")
    if isinstance(v, dict):
        for item in v.values():
            _finite_json(item, at)
    elif isinstance(v, list):
        for item in v:
            _finite_json(item, at)


def _efficacy(v: Any) -> dict[str, Any] | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise _Invalid("efficacy", "must be a JSON object")
    for key, item in v.items():
        _finite_json(item, f"efficacy.{key}")  # the key names the place: nested values are free-form
    for key in EFFICACY_RATES & set(v):
        rate = v[key]
        if rate is not None and (not _is_number(rate) or not 0 <= rate <= 1):
            raise _Invalid("efficacy", f"efficacy.{key} must be a share in [0, 1] or null, not {rate!r}")
    return v


def _parse(data: dict, path: Path, draft: bool) -> Preset:
    for key in data:
        if key not in _FIELDS:
            raise _Invalid(key, "unknown field")
    name = data.get("name", path.stem if draft else None)
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise _Invalid("name", "field required" if name is None else
                       "must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit")
    strings = {k: _text(data, k, required=not (draft and k in _DRAFT_OPTIONAL)) for k in _DRAFT_OPTIONAL}
    features = data.get("features")
    # A preset clamps, or only watches (monitors and no clamps: "features": []).
    fewest = 0 if data.get("monitors") else 1
    if not isinstance(features, list) or not fewest <= len(features) <= MAX_CLAMPS:
        raise _Invalid("features", "field required" if features is None else
                       f"must list {fewest} to {MAX_CLAMPS} clamps" + ("" if fewest == 0 else " (0 with monitors)"))
    clamps = tuple(_feature(item, f"features[{i}]") for i, item in enumerate(features))
    positions = data.get("positions", "all")
    if not isinstance(positions, str) or positions not in POSITIONS:
        raise _Invalid("positions", f"must be one of {', '.join(POSITIONS)}")
    limit = data.get("generated_limit")
    if limit is not None and (not _is_int(limit) or not 0 <= limit <= MAX_GENERATED_LIMIT):
        raise _Invalid("generated_limit", f"must be an integer in [0, {MAX_GENERATED_LIMIT}] or null")
    try:
        SteeringSpec(positions=positions, generated_limit=limit).validate_window()
    except SteeringError as e:
        raise _Invalid(e.param, str(e)) from None
    words = data.get("concept_words", [])
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise _Invalid("concept_words", "must be a list of strings")
    cf = data.get("concept_features")
    if cf is not None:
        if not isinstance(cf, list) or len(cf) > MAX_CLAMPS:
            raise _Invalid("concept_features", f"must be a list of at most {MAX_CLAMPS} feature indices, or null")
        for k, index in enumerate(cf):
            if not _is_int(index) or index < 0:
                raise _Invalid(f"concept_features[{k}]", "must be an integer >= 0")
    goal, prompt_set = data.get("goal", "steer"), data.get("prompt_set", "neutral")
    if not isinstance(goal, str) or goal not in GOALS:
        raise _Invalid("goal", f"must be one of {', '.join(GOALS)}")
    if not isinstance(prompt_set, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", prompt_set):
        raise _Invalid("prompt_set", "must be a prompt set name (lower-case letters, digits, '_', '-')")
    monitors = data.get("monitors", [])
    if not isinstance(monitors, list) or len(monitors) > MAX_MONITORS:
        raise _Invalid("monitors", f"must be a list of at most {MAX_MONITORS} monitors")
    return Preset(
        name=name, features=clamps, positions=positions, generated_limit=limit,
        monitors=tuple(_monitor(item, f"monitors[{k}]") for k, item in enumerate(monitors)),
        system_prompt=_text(data, "system_prompt", required=False), concept_words=tuple(words),
        concept_features=tuple(cf) if cf is not None else None, goal=goal, prompt_set=prompt_set,
        compare_prompt=_text(data, "compare_prompt", required=False), efficacy=_efficacy(data.get("efficacy")),
        notes=_text(data, "notes", required=False), path=path, **strings,
    )


def read_preset(path: str | Path, *, draft: bool = False) -> Preset:
    """Read and check one preset file (see the module docstring); raises PresetError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise PresetError(path, None, f"cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise PresetError(path, None, f"not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise PresetError(path, None, "must hold a JSON object")
    try:
        return _parse(data, path, draft)
    except _Invalid as e:
        raise PresetError(path, e.field, str(e)) from None


def find_preset(name_or_path: str | Path, presets_dir: str | Path = "presets", *, draft: bool = True) -> Preset:
    """A preset by file path, or by name from `presets_dir/NAME.json` (drafts allowed by default)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = Path(presets_dir) / f"{name_or_path}.json"
    if not path.is_file():
        raise SteeringError(f"no preset file {str(name_or_path)!r} (nor {path})", "preset")
    return read_preset(path, draft=draft)


def check_files(directory: Path | None) -> int:
    """Check every preset file in `directory` (none if it is missing) without a model; raises PresetError."""
    if directory is None or not Path(directory).is_dir():
        return 0
    paths = sorted(Path(directory).glob("*.json"))
    for path in paths:
        read_preset(path)
    return len(paths)


@dataclass(frozen=True)
class PresetEntry:
    """A preset of a registry: usable here, or not and why."""

    preset: Preset
    available: bool
    reason: str | None = None


def unavailable_reason(preset: Preset, model_id: str, sae_id: str, sae: SparseAutoencoder | None) -> str | None:
    """Why the preset cannot steer this model and SAE (None when it can; a draft names neither)."""
    if preset.model is not None and preset.model != model_id:
        return f"made for model {preset.model!r}; this server runs {model_id!r}"
    if sae is None:
        return "this server runs without an SAE"
    if preset.sae is not None and preset.sae != sae_id:
        return f"made for SAE {preset.sae!r}; this server runs {sae_id!r}"
    return None


def check_against(preset: Preset, sae: SparseAutoencoder) -> None:
    """Feature and concept-feature indices in range, known max activations for `max` units; raises PresetError."""
    path = preset.path or Path(preset.name)
    try:
        preset.spec.validate(sae)
    except SteeringError as e:
        raise PresetError(path, e.param, str(e)) from None
    try:
        validate_monitors(preset.monitors, sae)
    except SteeringError as e:
        raise PresetError(path, e.param, str(e)) from None
    for k, index in enumerate(preset.concept_features or ()):
        if index >= sae.d_sae:
            raise PresetError(path, f"concept_features[{k}]",
                              f"feature {index} does not exist: this SAE has {sae.d_sae} features")


class PresetRegistry:
    """The presets of one folder, by name, checked against one model and SAE."""

    def __init__(self, entries: list[PresetEntry] | None = None):
        self._entries = {e.preset.name: e for e in entries or []}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> PresetEntry | None:
        return self._entries.get(name)

    def all(self) -> list[PresetEntry]:
        return [self._entries[k] for k in sorted(self._entries)]

    @classmethod
    def load(cls, directory: Path | None, model_id: str, sae_id: str,
             sae: SparseAutoencoder | None) -> "PresetRegistry":
        """Read every *.json in `directory` (a missing folder means no presets); raises PresetError."""
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
            reason = unavailable_reason(preset, model_id, sae_id, sae)
            if reason is None:
                check_against(preset, sae)  # type: ignore[arg-type]  # reason None means an SAE is loaded
            else:
                log.warning("preset %r (%s) is unavailable: %s", preset.name, path, reason)
            entries.append(PresetEntry(preset, reason is None, reason))
        usable = sum(e.available for e in entries)
        log.info("presets: %d loaded from %s, %d usable with %s / %s", len(entries), directory, usable, model_id, sae_id)
        return cls(entries)
