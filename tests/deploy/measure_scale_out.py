"""`python -m tests.deploy.measure_scale_out [--seconds 60] [--clients 16] [--reps 1]`: one server vs Ray Serve.

Soaks (`steering.evaluation.loadtest.soak`: back-to-back clients cycling
plain, steered, streamed and compare requests) three set-ups of the default
model on this machine, one after the other, each freshly started:

    single     python -m api --threads T                          (T: all cores)
    ray_1      python -m api.scale_out --replicas 1 --threads T
    ray_2      python -m api.scale_out --replicas 2 --threads T/2

and prints one JSON object: each set-up's tokens/s, request count, errors and
latency/TTFT percentiles (medians over --reps, every other repetition in
reverse order), with `ray_2_vs_ray_1` and `ray_1_vs_single` ratios. On a
machine with few cores the replicas share them, so two replicas cannot be
twice one; the figure says what Ray's routing costs and what a second
replica buys here, not on a cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from steering.evaluation.loadtest import soak, start_server, stop_server
from tests.servers import start_scale_out, stop_scale_out


def measure(seconds: float, clients: int, reps: int) -> dict:
    cores = os.cpu_count() or 2
    setups = {
        "single": lambda: start_server(["--threads", str(cores)]),
        "ray_1": lambda: start_scale_out(1, cores, Path(f"/tmp/scale_out_ray_1_{os.getpid()}.log")),
        "ray_2": lambda: start_scale_out(2, max(1, cores // 2), Path(f"/tmp/scale_out_ray_2_{os.getpid()}.log")),
    }
    runs: dict[str, list[dict]] = {name: [] for name in setups}
    for rep in range(reps):
        for name in (reversed(list(setups)) if rep % 2 else list(setups)):
            proc, url = setups[name]()
            try:
                soak(url, clients=clients, seconds=5, max_tokens=24)  # warm-up: first compiles, KV slots
                runs[name].append(soak(url, clients=clients, seconds=seconds, max_tokens=24).to_dict())
            finally:
                stop_server(proc) if name == "single" else stop_scale_out(proc)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    result = {name: {"tokens_per_s": round(med(name, "tokens_per_s"), 2), "requests": med(name, "requests"),
                     "errors": sum(r["errors"] for r in runs[name]), "latency_ms": runs[name][-1]["latency_ms"],
                     "ttft_ms": runs[name][-1]["ttft_ms"]} for name in setups}
    result["ray_2_vs_ray_1"] = round(result["ray_2"]["tokens_per_s"] / result["ray_1"]["tokens_per_s"], 3)
    result["ray_1_vs_single"] = round(result["ray_1"]["tokens_per_s"] / result["single"]["tokens_per_s"], 3)
    result["conditions"] = {"cores": cores, "clients": clients, "seconds": seconds, "reps": reps, "max_tokens": 24,
                            "load_avg_1m": round(os.getloadavg()[0], 2)}
    return result


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tests.deploy.measure_scale_out")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--reps", type=int, default=1)
    args = p.parse_args()
    print(json.dumps(measure(args.seconds, args.clients, args.reps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
