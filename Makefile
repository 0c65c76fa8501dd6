# Two commands for a fresh machine with Python 3.11 and pip:
#   make serve   serve the embedded default models on http://127.0.0.1:8000
#   make test    run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch is taken first so nothing pulls a multi-GB CUDA build;
# on a GPU host set TORCH to the build you want.
TORCH ?= torch==2.13.0

.PHONY: install serve test

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m service.proto.build >/dev/null
	touch $@

serve: install
	$(VENV)/bin/rewardserve serve $(ARGS)

test: install
	$(PY) -m pytest -q $(ARGS)
