"""`python -m api [--host H] [--port P] [--model M] [--sae S] ...`: run the server with uvicorn.

Flags and environment variables are listed in `api.settings`. The server binds
at once; the model loads in the background (GET /ready turns 200 when done).
If loading fails, the server stops with exit status 1.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    from api.app import create_app
    from api.settings import settings_from
    from steering.presets import PresetError, check_files

    settings = settings_from(argv)
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
    server = uvicorn.Server(config)
    server.run()
    if failed:
        print(f"error: start-up failed: {failed[0]}", file=sys.stderr)
        return 1
    if not server.started:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
