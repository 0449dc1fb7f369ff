"""`python -m api.scale_out --replicas 2 [server flags]`: the server as N Ray Serve replicas behind one port.

Takes every flag of `python -m api` (model, SAE, presets, keys, limits; the
same environment variables) plus how to scale (`api.ray_serve`). Without
`--address` it starts a Ray cluster of this machine only, on 127.0.0.1;
with `--address auto` (or host:port) it joins a cluster started with
`ray start --head` and `ray start --address=...` on other machines, and
replicas land wherever Ray finds the CPUs (or GPUs) they ask for. Ray Serve's
HTTP proxy listens on --host/--port. Prints `ready: N replicas at URL` once
every replica has loaded, and runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Sequence

from api.__main__ import build_parser
from api.ray_serve import Scaling, build_application
from api.settings import SettingsError, is_loopback, settings_from


def _parser() -> argparse.ArgumentParser:
    p = build_parser()
    p.prog = "python -m api.scale_out"
    p.description = "The steering server as N Ray Serve replicas behind one port."
    g = p.add_argument_group("scale-out (Ray Serve)")
    g.add_argument("--replicas", type=int, default=2, help="replicas to start with (and the least kept; default 2)")
    g.add_argument("--max-replicas", type=int, default=None,
                   help="autoscale up to this many on queue length (default: --replicas, no autoscaling)")
    g.add_argument("--target-ongoing", type=int, default=None,
                   help="requests per replica above which Ray Serve adds one (default: --max-batch)")
    g.add_argument("--cpus-per-replica", type=float, default=None, help="Ray CPUs each replica reserves "
                   "(default: --threads, else 1)")
    g.add_argument("--gpus-per-replica", type=float, default=0.0, help="Ray GPUs each replica reserves (default 0)")
    g.add_argument("--address", default=None, help="an existing Ray cluster ('auto' or host:port); default: "
                   "start one on this machine")
    g.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local cluster (default: all)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    scale_keys = ("replicas", "max_replicas", "target_ongoing", "cpus_per_replica", "gpus_per_replica", "address",
                  "num_cpus")
    scale = {k: getattr(args, k) for k in scale_keys}
    try:
        settings = settings_from({k: v for k, v in vars(args).items() if k not in scale_keys})
    except SettingsError as exc:
        parser.error(str(exc))
    if not is_loopback(settings.host) and not settings.api_keys and not settings.insecure_no_auth:
        print(f"error: refusing to serve {settings.host} without an API key (see `python -m api --help`)",
              file=sys.stderr)
        return 2
    if scale["replicas"] < 1 or (scale["max_replicas"] is not None and scale["max_replicas"] < scale["replicas"]):
        parser.error("--replicas must be at least 1 and --max-replicas at least --replicas")
    scaling = Scaling(min_replicas=scale["replicas"], max_replicas=scale["max_replicas"] or scale["replicas"],
                      target_ongoing_requests=scale["target_ongoing"] or settings.max_batch,
                      cpus_per_replica=scale["cpus_per_replica"] or float(settings.threads or 1),
                      gpus_per_replica=scale["gpus_per_replica"])

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home
    import ray
    from ray import serve

    if scale["address"]:
        ray.init(address=scale["address"])
    else:
        ray.init(num_cpus=scale["num_cpus"], include_dashboard=False, _node_ip_address="127.0.0.1")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        # serve.run returns once every replica's constructor (model loading) has returned.
        serve.run(build_application(settings, scaling), name="steering", route_prefix="/")
        print(f"ready: {scaling.min_replicas} replicas at http://{settings.host}:{settings.port}", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
