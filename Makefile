# The two commands of the quick start: `make run` and `make test`. Both create .venv first if it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
METHODS ?= adamw,galore,blockllm
ARGS ?=

.PHONY: setup run test clean

$(VENV)/.installed: requirements.txt requirements-test.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch pulls gigabytes of CUDA wheels.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

setup: $(VENV)/.installed

run: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" mlflow run . --env-manager local -P methods=$(METHODS) $(ARGS)

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf results mlflow.db mlruns mlartifacts
