"""The container's figures for the README, printed as one JSON object: `python -m tests.deploy.measure`.

Builds the image three times on the stand-in base (`tests.deploy.images`): with an empty layer cache
(cold), again unchanged (warm), and after a change to the code (a touched module: the torch and
dependency layers are reused); then the image's size and the time from `docker run` to GET /ready = 200.
Removes the images it built (the base is kept). Needs a Docker engine; takes ~10 minutes here.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from tests.deploy.images import docker, engine_unavailable, ensure_base_image, torch_index
from tests.servers import ROOT, free_port

TOUCHED = ROOT / "steering" / "errors.py"


def build(tag: str, base: str, index_url: str, host: str) -> float:
    t0 = time.perf_counter()
    docker("build", "--force-rm", "--network", "host", "-t", tag, "--build-arg", f"BASE_IMAGE={base}",
           "--build-arg", f"TORCH_INDEX_URL={index_url}", "--build-arg", f"TORCH_TRUSTED_HOST={host}", str(ROOT),
           timeout=3600)
    return time.perf_counter() - t0


def start_to_ready(tag: str) -> float:
    port, name = free_port(), f"steering-measure-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    docker("run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8000", "-e", "STEERING_API_KEYS=k", tag)
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", headers={"Authorization": "Bearer k"},
                             timeout=2).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.TransportError:
                pass
            if time.perf_counter() - t0 > 600:
                raise TimeoutError("not ready in 600 s")
            time.sleep(0.2)
    finally:
        docker("stop", "-t", "20", name, check=False)


def main() -> None:
    reason = engine_unavailable()
    if reason:
        raise SystemExit(reason)
    base = ensure_base_image()
    tag = f"steering-measure/app:{uuid.uuid4().hex[:8]}"
    original = TOUCHED.read_text()
    try:
        with tempfile.TemporaryDirectory() as tmp, torch_index(Path(tmp)) as (url, host):
            cold = build(tag, base, url, host)
            warm = build(tag, base, url, host)
            TOUCHED.write_text(original + "\n# touched by tests.deploy.measure\n")
            code_change = build(tag, base, url, host)
        TOUCHED.write_text(original)
        size = int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout.strip())
        ready = start_to_ready(tag)
    finally:
        TOUCHED.write_text(original)
        docker("rmi", "-f", tag, check=False)
        docker("image", "prune", "-f", check=False)
    print(json.dumps({"image_mb": round(size / 2**20), "build_cold_s": round(cold, 1), "build_warm_s": round(warm, 1),
                      "build_after_code_change_s": round(code_change, 1), "start_to_ready_s": round(ready, 1),
                      "base_image": base}))


if __name__ == "__main__":
    main()
