# The two commands of the quick start: `make run` and `make test`. Both create .venv first if it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
METHODS ?= adamw,galore,blockllm
# The MLflow experiment: mlflow run makes its run there (not in "Default"), and the comparison logs there.
EXPERIMENT ?= memopt
ARGS ?=

.PHONY: setup run test clean

$(VENV)/.installed: requirements.txt requirements-test.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch pulls gigabytes of CUDA wheels.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements-test.txt
	# memopt itself, editable: `import memopt` works from any folder (the pins above are its dependencies).
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed

run: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" mlflow run . --env-manager local --experiment-name $(EXPERIMENT) \
		-P experiment=$(EXPERIMENT) -P methods=$(METHODS) $(ARGS)

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf results mlflow.db mlruns mlartifacts
