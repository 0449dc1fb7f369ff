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
from typing import Any

from steering.cli.common import CommandError


def run(args: argparse.Namespace) -> int:
    from steering.evaluation.loadtest import soak, start_server, stop_server

    if bool(args.url) == bool(args.start):
        raise CommandError("give --url of a running server, or --start", "url")
    if args.fairness:
        return run_fairness(args)
    proc = None
    url, pid = args.url, args.pid
    if args.start:
        proc, url = start_server(list(args.server_arg), api_key=args.api_key)
        pid = proc.pid
    try:
        result = soak(url.rstrip("/"), args.clients, args.seconds, args.max_tokens, args.api_key, pid, args.feature,
                      args.warmup)
    finally:
        if proc is not None:
            exit_code = stop_server(proc)
    if proc is not None:
        result.server_exit = exit_code
    print(json.dumps(result.to_dict(), indent=None if args.compact else 2))
    return 0 if result.errors == 0 else 1


def run_fairness(args: argparse.Namespace) -> int:
    from steering.evaluation.fairness import CONCEPTS, concept_keys, fairness
    from steering.evaluation.loadtest import start_server, stop_server

    if not 0 < args.concepts <= len(CONCEPTS):
        raise CommandError(f"--concepts must be in 1..{len(CONCEPTS)}", "concepts")
    keys = concept_keys(args.concepts)
    proc, url = None, args.url
    if args.start:
        proc, url = start_server([*(f"--api-key={k}" for k in keys), *args.server_arg], api_key=keys[-1])
    try:
        result = fairness(url.rstrip("/"), keys, args.concepts, max_tokens=args.max_tokens)
    finally:
        if proc is not None:
            result_exit = stop_server(proc)
    if proc is not None:
        result["server_exit"] = result_exit
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
