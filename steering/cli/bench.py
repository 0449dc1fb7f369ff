"""`python -m steering bench [--json]`: the engine's speed and consistency (`steering.evaluation.benchmark`).

Loads the model and runs every measurement on one compute thread, as the
server does; the last line of output is one JSON object. `--random ARCH[:SIZE]`
measures a random-weight model of a family and shape instead
(`steering.evaluation.random_models`), e.g. the batched Hugging Face path on
a tiny GPT-2 or Gemma 2, or Gemma-2-2B's shape on a GPU.
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
        if args.random:
            from steering.evaluation.random_models import random_steered_model

            arch, _, size = args.random.partition(":")
            sm = compute.run(lambda: random_steered_model(arch, size or "tiny", args.d_sae, args.device, args.dtype))
        else:
            sm = compute.run(lambda: SteeredModel.load(args.model, args.sae, device=args.device, dtype=args.dtype,
                                                       device_map=args.device_map))
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
    p.add_argument("--random", default=None, metavar="ARCH[:SIZE]",
                   help="measure a random-weight model instead (no download): ARCH one of "
                        "llama, gemma2, gemma3, qwen2, qwen3, mistral, phi3, gpt2; SIZE tiny (default) or real "
                        "(a published model's shape, e.g. gemma2:real is Gemma-2-2B's), with a random JumpReLU SAE")
    p.add_argument("--d-sae", type=int, default=None, help="with --random: the SAE's width (default 1024 tiny, "
                   "16384 real)")
    add_model_arguments(p)
    p.set_defaults(handler=run)
