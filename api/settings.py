"""Server settings: one value object, built from flags over environment variables.

    flag            environment variable    default
    --host          STEERING_HOST           127.0.0.1
    --port          STEERING_PORT           8000
    --model         STEERING_MODEL          the embedded default (SmolLM2-135M-Instruct)
    --sae           STEERING_SAE            the shipped SAE for the model ("none": no steering)
    --dtype         STEERING_DTYPE          auto
    --device        STEERING_DEVICE         auto
    --threads       STEERING_THREADS        torch's choice
    --presets-dir   STEERING_PRESETS_DIR    ./presets
    --max-queue     STEERING_MAX_QUEUE      64
    --max-batch     STEERING_MAX_BATCH      8 (rows decoded together by the engine)

A flag wins over its variable (the flags are parsed by the command,
`api.__main__`). Nothing here loads a model: `api.app.create_app` takes the
settings and loads in its lifespan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

DEFAULT_PRESETS_DIR = Path("presets")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    model: str | None = None
    sae: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    threads: int | None = None
    presets_dir: Path = DEFAULT_PRESETS_DIR
    max_queue: int = 64
    max_batch: int = 8
    # Seconds a 429 tells the client to wait (Retry-After).
    retry_after_s: float = 2.0
    # max_tokens when a request sends neither max_tokens nor max_completion_tokens
    # (capped by the context left after the prompt).
    default_max_tokens: int = 1024
    log_level: str = "info"


ENV = {
    "host": "STEERING_HOST",
    "port": "STEERING_PORT",
    "model": "STEERING_MODEL",
    "sae": "STEERING_SAE",
    "dtype": "STEERING_DTYPE",
    "device": "STEERING_DEVICE",
    "threads": "STEERING_THREADS",
    "presets_dir": "STEERING_PRESETS_DIR",
    "max_queue": "STEERING_MAX_QUEUE",
    "max_batch": "STEERING_MAX_BATCH",
}


INTEGERS = ("port", "max_queue", "max_batch", "threads")


class SettingsError(ValueError):
    """An environment variable whose value is not of its setting's type."""


def settings_from(flags: Mapping[str, object] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from `flags` (typed values by setting name; None means unset) over environment variables
    over defaults; raises SettingsError for a variable that does not parse."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for name, var in ENV.items():
        raw = env.get(var)
        if raw in (None, ""):
            continue
        if name in INTEGERS:
            try:
                values[name] = int(raw)  # type: ignore[arg-type]
            except ValueError:
                raise SettingsError(f"{var}={raw!r}: expected an integer") from None
        elif name == "presets_dir":
            values[name] = Path(raw)  # type: ignore[arg-type]
        else:
            values[name] = raw
    names = {f.name for f in fields(Settings)}
    values.update({k: v for k, v in (flags or {}).items() if k in names and v is not None})
    return Settings(**values)  # type: ignore[arg-type]
