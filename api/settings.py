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

A flag wins over its variable. Nothing here loads a model: `api.app.create_app`
takes the settings and loads in its lifespan.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping, Sequence

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


_ENV = {
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


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m api",
        description="OpenAI-compatible chat server that steers the model by clamping SAE features.",
    )
    p.add_argument("--host", help="bind address (env STEERING_HOST; default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (env STEERING_PORT; default 8000)")
    p.add_argument("--model", help="HF model directory or cached hub id (env STEERING_MODEL; default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--sae", help="SAE folder or file, 'default' or 'none' (env STEERING_SAE)")
    p.add_argument("--dtype", help="auto, float32, bfloat16 or float16 (env STEERING_DTYPE)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (env STEERING_DEVICE)")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads (env STEERING_THREADS)")
    p.add_argument("--presets-dir", type=Path, help="folder of preset JSON files (env STEERING_PRESETS_DIR; default ./presets)")
    p.add_argument("--max-queue", type=_positive_int, help="requests waiting before 429 (env STEERING_MAX_QUEUE; default 64)")
    p.add_argument("--max-batch", type=_positive_int, help="rows decoded together (env STEERING_MAX_BATCH; default 8)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def settings_from(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from command-line flags over environment variables over defaults."""
    env = os.environ if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(argv)
    values: dict[str, object] = {}
    types = {f.name: f.type for f in fields(Settings)}
    for name, var in _ENV.items():
        raw = env.get(var)
        if raw in (None, ""):
            continue
        try:
            if name in ("port", "max_queue", "max_batch", "threads"):
                values[name] = int(raw)  # type: ignore[arg-type]
            elif name == "presets_dir":
                values[name] = Path(raw)  # type: ignore[arg-type]
            else:
                values[name] = raw
        except ValueError:
            parser.error(f"{var}={raw!r}: expected {types[name]}")
    for name in ("host", "port", "model", "sae", "dtype", "device", "threads", "presets_dir", "max_queue", "max_batch",
                 "log_level"):
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    return Settings(**values)  # type: ignore[arg-type]
