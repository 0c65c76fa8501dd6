# Two commands for a fresh machine with Python 3.11 and pip:
#   make serve   serve the embedded default models on http://127.0.0.1:8000
#   make test    run the test suite, the tests marked e2e (outside programs) included;
#                ARGS='-m "not e2e"' leaves them out
# and one for the benchmarks (loadtests/RESULTS.md, about 45 minutes on 2 cores):
#   make bench
# `make protos` regenerates the committed gRPC code after a change to service/grpc/proto/*.proto;
# `make lint` runs ruff (pyproject's [tool.ruff]) over the repository, as CI does.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch is taken first so nothing pulls a multi-GB CUDA build;
# on a GPU host set TORCH to the build you want. The Dockerfile's default is the same pin,
# inside pyproject's range (tests/test_packaging.py checks both).
TORCH ?= torch==2.13.0

# Ray Serve (rewardserve as a Ray Serve app, and the benchmark's off-the-shelf batcher) lives
# in its own venv, so its large dependency set never changes the service's.
RAY_VENV := loadtests/.venv-ray

.PHONY: install serve test lint bench protos docs

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

serve: install
	$(VENV)/bin/rewardserve serve $(ARGS)

test: install $(RAY_VENV)/.installed
	$(PY) -m pytest -q $(ARGS)

lint: install
	$(PY) -m ruff check .

bench: install $(RAY_VENV)/.installed
	$(PY) -m loadtests.run $(ARGS)

protos: install
	$(PY) -m service.grpc.proto.build

# the docs site (mkdocs.yml) with the configuration reference generated from the settings' schema
# (tests check both: the reference is current, the site builds strict)
docs: install
	$(PY) -m service.config.reference > docs/configuration.md
	$(VENV)/bin/mkdocs build --strict

$(RAY_VENV)/.installed: pyproject.toml
	python3 -m venv $(RAY_VENV)
	$(RAY_VENV)/bin/pip install -q "$(TORCH)"
	$(RAY_VENV)/bin/pip install -q -e ".[serve,ray]"
	touch $@
