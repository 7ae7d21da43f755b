# vlalign: every target creates .venv when it is missing.
# All set-up steps live in cluster/install.sh, which the image (cluster/docker/Dockerfile) runs too.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vlalign-installed
INSTALL := cluster/install.sh
# auto: the CUDA build of torch where an NVIDIA GPU is present, the CPU wheel torch==2.13.0 otherwise.
TORCH ?= auto
# The image the KubeRay and launcher files under cluster/ name (`make image` builds it).
IMAGE ?= ghcr.io/vlalign/vlalign:0.1.0-cuda
PYTEST_ARGS ?=
# Two pytest-xdist workers (one per core); modules that start Ray share one worker (tests/conftest.py).
TEST_WORKERS ?= 2

.PHONY: setup browser demo test lint format bench image clean

setup: $(STAMP) browser

$(STAMP): pyproject.toml
	PYTHON=$(PYTHON) bash $(INSTALL) --venv $(VENV) --torch $(TORCH) --extras dev,bench
	@touch $(STAMP)

# The browser test of the MLflow UI needs Debian's chromium (installed once, where missing).
browser:
	@bash $(INSTALL) --only-browser

demo: $(STAMP)
	$(VENV)/bin/vlalign demo

test: $(STAMP) browser
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) bench/run_all.py

image:
	docker build -f cluster/docker/Dockerfile -t $(IMAGE) .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
