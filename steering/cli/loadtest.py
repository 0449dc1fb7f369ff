"""`python -m steering loadtest`: soak a steering server and print what it cost as JSON.

    loadtest [--url URL | --start [--server-arg ARG ...]] [--clients 8] [--seconds 300]
             [--max-tokens 24] [--api-key KEY] [--pid PID] [--feature I] [--warmup 30]
    loadtest --fairness [--concepts 5] [--url URL | --start ...]

With `--start`, a fresh `python -m api` runs on a free loopback port for the
soak and is stopped with SIGTERM afterwards (its RSS is read from its pid).
The measurement: `steering.evaluation.loadtest`. `--fairness` measures a
plain request's time to first token beside new concept searches instead
(`steering.evaluation.fairness`; a server given by --url must accept the keys
`fairness-client-0..N`, --start passes them).
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

from steering.cli.common import CommandError


def _measure(args: argparse.Namespace, measure: Callable[[str, int | None], dict[str, Any]],
             server_args: list[str], api_key: str | None) -> dict[str, Any]:
    """measure(url, server pid) against --url, or against a fresh server (--start) stopped afterwards."""
    from steering.evaluation.loadtest import start_server, stop_server

    if bool(args.url) == bool(args.start):
        raise CommandError("give --url of a running server, or --start", "url")
    if not args.start:
        return measure(args.url.rstrip("/"), args.pid)
    proc, url = start_server(server_args, api_key=api_key)
    try:
        result = measure(url, proc.pid)
    finally:
        exit_code = stop_server(proc)
    return {**result, "server_exit": exit_code}


def run(args: argparse.Namespace) -> int:
    if args.fairness:
        return run_fairness(args)
    from steering.evaluation.loadtest import soak

    result = _measure(args, lambda url, pid: soak(url, args.clients, args.seconds, args.max_tokens, args.api_key, pid,
                                                  args.feature, args.warmup).to_dict(),
                      list(args.server_arg), args.api_key)
    print(json.dumps(result, indent=None if args.compact else 2))
    return 0 if result["errors"] == 0 else 1


def run_fairness(args: argparse.Namespace) -> int:
    from steering.evaluation.fairness import CONCEPTS, concept_keys, fairness

    if not 0 < args.concepts <= len(CONCEPTS):
        raise CommandError(f"--concepts must be in 1..{len(CONCEPTS)}", "concepts")
    keys = concept_keys(args.concepts)
    result = _measure(args, lambda url, pid: fairness(url, keys, args.concepts, max_tokens=args.max_tokens),
                      [*(f"--api-key={k}" for k in keys), *args.server_arg], keys[-1])
    print(json.dumps(result, indent=None if args.compact else 2))
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("loadtest", help="soak a server with N clients and report errors, latency and memory as JSON")
    p.add_argument("--url", default=None, help="a running server, e.g. http://127.0.0.1:8000")
    p.add_argument("--start", action="store_true", help="start a fresh `python -m api` for the soak")
    p.add_argument("--server-arg", action="append", default=[], help="an argument for the started server (repeatable)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=300.0)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--api-key", default=None)
    p.add_argument("--pid", type=int, default=None, help="the server's pid, for its memory (with --url)")
    p.add_argument("--feature", type=int, default=0, help="the feature the steered requests clamp")
    p.add_argument("--warmup", type=float, default=30.0, help="seconds before the warm RSS reading (the leak baseline)")
    p.add_argument("--fairness", action="store_true",
                   help="measure a plain request's first token beside new concept searches instead of a soak")
    p.add_argument("--concepts", type=int, default=5, help="new concepts sent at once (with --fairness)")
    p.add_argument("--compact", action="store_true", help="one line of JSON")
    p.set_defaults(handler=run)
