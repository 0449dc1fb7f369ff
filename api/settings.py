"""Server settings: one value object, built from flags over environment variables.

    flag            environment variable    default
    --host          STEERING_HOST           127.0.0.1
    --port          STEERING_PORT           8000
    --model         STEERING_MODEL          the embedded default (SmolLM2-135M-Instruct)
    --sae           STEERING_SAE            the shipped SAE for the model ("none": no steering)
    --dtype         STEERING_DTYPE          auto
    --device        STEERING_DEVICE         auto
    --device-map    STEERING_DEVICE_MAP     none (auto/balanced/sequential: one model over several GPUs)
    --threads       STEERING_THREADS        torch's choice
    --presets-dir   STEERING_PRESETS_DIR    ./presets
    --max-queue     STEERING_MAX_QUEUE      64
    --max-batch     STEERING_MAX_BATCH      8 (rows decoded together by the engine)
    --drain-timeout STEERING_DRAIN_TIMEOUT  30 (seconds running answers may finish after SIGTERM)
    --max-kv-mib    STEERING_MAX_KV_MIB     none: max-batch rows of the model's whole context (else the
                                            context served is shortened so that the K/V cache fits)
    --max-request-seconds STEERING_MAX_REQUEST_SECONDS 300 (a generation still running then ends with
                                            an error: request_timeout)
    --api-key       STEERING_API_KEYS       none: open (several: repeat the flag, or commas in the variable)
    --allowed-hosts STEERING_ALLOWED_HOSTS  none beyond loopback names (comma-separated)
    --max-body-bytes STEERING_MAX_BODY_BYTES 4194304
    --insecure-no-auth STEERING_INSECURE_NO_AUTH off: a non-loopback bind needs an API key
    --cors-origins  STEERING_CORS_ORIGINS   none: no CORS (comma-separated origins, or * for any)

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
    # Spread a model larger than one GPU over several (accelerate's "auto", "balanced", "sequential").
    device_map: str | None = None
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
    # On SIGTERM: seconds the answers in flight may take to finish before they end with an error event.
    drain_timeout: int = 30
    # Bound on the K/V cache in MiB (None: none beyond max_batch x the model's context).
    max_kv_mib: int | None = None
    # Wall-clock seconds one request may generate for before it ends with a request_timeout error.
    max_request_seconds: int = 300
    # Bearer keys every route but /health needs (empty: no keys); see api.guard.
    api_keys: tuple[str, ...] = ()
    # Host names served besides the loopback ones (api.guard).
    allowed_hosts: tuple[str, ...] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    # Origins whose pages may call the API from a browser (CORS; empty: none, "*": any).
    cors_origins: tuple[str, ...] = ()
    # Serve a non-loopback address without API keys (refused otherwise by `python -m api`).
    insecure_no_auth: bool = False


ENV = {
    "host": "STEERING_HOST",
    "port": "STEERING_PORT",
    "model": "STEERING_MODEL",
    "sae": "STEERING_SAE",
    "dtype": "STEERING_DTYPE",
    "device": "STEERING_DEVICE",
    "device_map": "STEERING_DEVICE_MAP",
    "threads": "STEERING_THREADS",
    "presets_dir": "STEERING_PRESETS_DIR",
    "max_queue": "STEERING_MAX_QUEUE",
    "max_batch": "STEERING_MAX_BATCH",
    "drain_timeout": "STEERING_DRAIN_TIMEOUT",
    "api_keys": "STEERING_API_KEYS",
    "allowed_hosts": "STEERING_ALLOWED_HOSTS",
    "max_body_bytes": "STEERING_MAX_BODY_BYTES",
    "insecure_no_auth": "STEERING_INSECURE_NO_AUTH",
    "max_kv_mib": "STEERING_MAX_KV_MIB",
    "cors_origins": "STEERING_CORS_ORIGINS",
    "max_request_seconds": "STEERING_MAX_REQUEST_SECONDS",
}


INTEGERS = ("port", "max_queue", "max_batch", "threads", "drain_timeout", "max_body_bytes", "max_kv_mib",
            "max_request_seconds")
LISTS = ("api_keys", "allowed_hosts", "cors_origins")  # comma-separated in the environment
BOOLEANS = ("insecure_no_auth",)  # 1/true/yes or 0/false/no


class SettingsError(ValueError):
    """An environment variable whose value is not of its setting's type."""


def is_loopback(host: str) -> bool:
    """Whether binding `host` serves this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
        elif name in BOOLEANS:
            if raw.strip().lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise SettingsError(f"{var}={raw!r}: expected 1/true/yes or 0/false/no")
            values[name] = raw.strip().lower() in ("1", "true", "yes")  # type: ignore[assignment]
        elif name in LISTS:
            values[name] = tuple(v.strip() for v in raw.split(",") if v.strip())  # type: ignore[arg-type]
        elif name == "presets_dir":
            values[name] = Path(raw)  # type: ignore[arg-type]
        else:
            values[name] = raw
    names = {f.name for f in fields(Settings)}
    values.update({k: tuple(v) if k in LISTS else v for k, v in (flags or {}).items()
                   if k in names and v is not None and v != [] and not (k in BOOLEANS and v is False)})
    return Settings(**values)  # type: ignore[arg-type]
