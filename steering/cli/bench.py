"""`python -m steering bench [--json]`: the engine's speed and consistency (`steering.evaluation.benchmark`).

Loads the model and runs every measurement on one compute thread, as the
server does; the last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from steering.cli.common import add_model_arguments


def run(args: argparse.Namespace) -> int:
    import torch

    from steering.engine.compute import ComputeThread
    from steering.evaluation.benchmark import run_bench
    from steering.steered_model import SteeredModel

    threads = args.threads or torch.get_num_threads()
    compute = ComputeThread(threads)  # loads and runs everything, as the server does
    try:
        sm = compute.run(lambda: SteeredModel.load(args.model, args.sae, device=args.device, dtype=args.dtype))
        result = run_bench(sm, threads, args.reps, args.max_tokens, args.consistency, compute)
    finally:
        compute.close()
    if not args.json:
        for key, value in result.items():
            if key not in ("conditions", "tps", "consistency"):
                print(f"{key:>24}: {value}")
        print(f"{'tokens/s':>24}: {result['tps']}")
        print(f"{'consistency':>24}: {result['consistency']}")
        print(f"{'conditions':>24}: {result['conditions']}")
    print(json.dumps(result))
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="measure the engine: steering overhead, batching gain, TTFT, consistency")
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions (medians are reported)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--consistency", type=int, default=64, metavar="N", help="mixed requests to check against running alone (0: skip)")
    add_model_arguments(p)
    p.set_defaults(handler=run)
