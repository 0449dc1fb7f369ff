"""The container image built and run for real: the Dockerfile on a stand-in base image, a container on
127.0.0.1, a steered chat and a compare through the official openai client, then everything removed.

Run by `make test` when a Docker engine answers (`make docker-engine` installs Debian's docker.io and
starts dockerd as root); skipped with the reason otherwise. The base image stands in for python:3.11-slim
(`tests.deploy.images`) and is kept between runs, as a pulled base would be; the app image, its build
layers and the container are removed.
"""

from __future__ import annotations

import time
import uuid

import httpx
import openai
import pytest

from tests.deploy.images import docker, engine_unavailable, ensure_base_image, torch_index
from tests.servers import ROOT, free_port

pytestmark = pytest.mark.docker

API_KEY = "container-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}  # every route but /health needs the key on a keyed server
READY_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    reason = engine_unavailable()
    if reason is not None:
        pytest.skip(reason)
    try:
        base = ensure_base_image()
    except RuntimeError as e:
        pytest.skip(str(e))
    tag = f"steering-test/app:{uuid.uuid4().hex[:8]}"
    with torch_index(tmp_path_factory.mktemp("torch-index")) as (index_url, trusted_host):
        build = docker("build", "--force-rm", "--network", "host", "-t", tag, "--build-arg", f"BASE_IMAGE={base}",
                       "--build-arg", f"TORCH_INDEX_URL={index_url}", "--build-arg", f"TORCH_TRUSTED_HOST={trusted_host}",
                       str(ROOT), timeout=3600, check=False)
    try:
        assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
        yield tag
    finally:
        docker("rmi", "-f", tag, check=False)
        docker("image", "prune", "-f", check=False)  # the build's dangling intermediate layers


@pytest.fixture(scope="module")
def container(image):
    port = free_port()
    name = f"steering-test-{uuid.uuid4().hex[:8]}"
    started = docker("run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8000",
                     "-e", f"STEERING_API_KEYS={API_KEY}", "-e", "STEERING_THREADS=2", image, check=False)
    assert started.returncode == 0, started.stderr
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{base}/ready", headers=AUTH, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            state = docker("inspect", "-f", "{{.State.Running}}", name, check=False)
            if state.stdout.strip() != "true":
                pytest.fail(f"the container stopped: {docker('logs', name, check=False).stderr[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"not ready in time: {docker('logs', name, check=False).stderr[-3000:]}")
            time.sleep(1)
        yield base, name
    finally:
        docker("stop", "-t", "20", name, check=False)


def test_the_image_runs_as_a_user_with_a_healthcheck(image):
    config = docker("image", "inspect", "-f", "{{.Config.User}}|{{json .Config.Healthcheck.Test}}", image).stdout
    user, health = config.strip().split("|", 1)
    assert user == "app" and "/health" in health


def test_a_steered_chat_and_a_compare_through_the_official_client(container):
    base, name = container
    assert httpx.get(f"{base}/v1/models", timeout=10).status_code == 401  # it binds 0.0.0.0: keys are required
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    steering = {"preset": "sports", "compare": True}
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What should I do this weekend?"}], max_tokens=32,
        temperature=0, seed=0, extra_body={"steering": steering})
    assert [c.model_extra["steered"] for c in reply.choices] == [True, False]
    steered, plain = reply.choices[0].message.content, reply.choices[1].message.content
    assert steered.strip() and plain.strip() and steered != plain
    words = ("sport", "game", "team", "football", "soccer", "basketball", "play", "match")
    assert any(w in steered.lower() for w in words)
    health = docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()
    assert health in ("starting", "healthy")
