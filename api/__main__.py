"""`python -m api [--host H] [--port P] [--model M] [--sae S] ...`: run the server with uvicorn.

Flags and environment variables are listed in `api.settings` (this command
parses the flags; the settings object is built there). The server binds
at once; the model loads in the background (GET /ready turns 200 when done).
If loading fails, the server stops with exit status 1. SIGTERM drains
(`api.shutdown`): exit status 0 once the answers in flight have ended.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Mapping, Sequence

from api.settings import Settings, SettingsError, is_loopback, settings_from


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
    p.add_argument("--device-map", help="spread a model larger than one GPU over several: auto, balanced or "
                   "sequential (env STEERING_DEVICE_MAP; default: one device)")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads (env STEERING_THREADS)")
    p.add_argument("--presets-dir", type=Path, help="folder of preset JSON files (env STEERING_PRESETS_DIR; default ./presets)")
    p.add_argument("--max-queue", type=_positive_int, help="requests waiting before 429 (env STEERING_MAX_QUEUE; default 64)")
    p.add_argument("--max-batch", type=_positive_int, help="rows decoded together (env STEERING_MAX_BATCH; default 8)")
    p.add_argument("--drain-timeout", type=int, help="seconds the answers in flight may take to finish after SIGTERM "
                   "before they end with an error event (env STEERING_DRAIN_TIMEOUT; default 30)")
    p.add_argument("--max-kv-mib", type=_positive_int, help="bound on the K/V cache in MiB: the context served "
                   "is shortened so that max-batch rows fit (env STEERING_MAX_KV_MIB; default: no bound)")
    p.add_argument("--max-request-seconds", type=_positive_int, help="wall-clock seconds a request may generate "
                   "before it ends with a request_timeout error (env STEERING_MAX_REQUEST_SECONDS; default 300)")
    p.add_argument("--api-key", dest="api_keys", action="append", metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every route but /health (repeatable; "
                   "env STEERING_API_KEYS, comma-separated)")
    p.add_argument("--allowed-hosts", type=lambda t: [h.strip() for h in t.split(",") if h.strip()],
                   help="Host names served besides localhost, 127.0.0.1 and [::1] (comma-separated; "
                   "env STEERING_ALLOWED_HOSTS)")
    p.add_argument("--cors-origins", type=lambda t: [o.strip() for o in t.split(",") if o.strip()],
                   help="origins whose pages may call the API, e.g. http://localhost:3000 (comma-separated, * for "
                   "any; env STEERING_CORS_ORIGINS; default: none)")
    p.add_argument("--max-body-bytes", type=_positive_int, help="largest request body (env STEERING_MAX_BODY_BYTES; "
                   "default 4194304)")
    p.add_argument("--insecure-no-auth", action="store_true", default=None,
                   help="serve a non-loopback address without API keys (env STEERING_INSECURE_NO_AUTH=1)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def parse_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from command-line flags over environment variables over defaults (exits on a bad one)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return settings_from(vars(args), environ)
    except SettingsError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    from api.app import create_app
    from api.shutdown import DrainingServer
    from steering.presets import PresetError, check_files

    settings = parse_settings(argv)
    if not is_loopback(settings.host) and not settings.api_keys and not settings.insecure_no_auth:
        print(f"error: refusing to serve {settings.host} without an API key: anyone who reaches it could use "
              "the model. Set --api-key (STEERING_API_KEYS), or --insecure-no-auth (STEERING_INSECURE_NO_AUTH=1) "
              "behind your own gateway.", file=sys.stderr)
        return 2
    try:  # a broken preset file stops start-up before anything loads
        check_files(settings.presets_dir)
    except PresetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    failed: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_fatal(exc: BaseException) -> None:
        failed.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            lifespan="on", timeout_graceful_shutdown=5)
    server = DrainingServer(config, app, settings.drain_timeout)
    server.run()
    if failed:
        print(f"error: start-up failed: {failed[0]}", file=sys.stderr)
        return 1
    if not server.started:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
