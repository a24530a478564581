"""The README.md model card of an exported (or pushed) checkpoint.

It states the run, checkpoint and base model, the recipe and data, the key hyper-parameters (learning rate and
schedule, batch, length, LoRA, and the method's own section), each evaluation metric's first and last value up to
the checkpoint's step (from the run's ``metrics.jsonl``), the posttrain version, how to load the model, and the
run's whole resolved ``config.yaml``.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path
from typing import Any

import yaml

from posttrain.config import METHOD_SECTIONS
from posttrain.run_files import METRICS_FILE, flatten_config, read_metrics

SUMMARY_KEYS = ("name", "recipe", "method", "trainer", "model", "data", "dataset", "loss", "lora", "seed", "steps")
KEY_SETTINGS = (
    "optim.lr", "optim.schedule", "optim.warmup_ratio", "optim.weight_decay", "optim.max_grad_norm",
    "train.batch_size", "train.grad_accum", "train.max_steps", "train.epochs", "train.precision",
    "data.max_length", "model.lora", "seed",
)
EVAL_PREFIX = "eval/"


def posttrain_version() -> str:
    try:
        return importlib.metadata.version("posttrain")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def describe_value(value: Any) -> str:
    """A one-line rendering of a config value: mappings as ``key=value`` pairs, lists comma-separated."""
    if isinstance(value, dict):
        return ", ".join(f"{key}={describe_value(item)}" for key, item in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(describe_value(item) for item in value)
    return str(value)


def configured_base_model(config: dict) -> str | None:
    """The base model a run config names: its ``model`` entry, or that entry's ``name``/``name_or_path``."""
    model_entry = config.get("model")
    if isinstance(model_entry, dict):
        model_entry = model_entry.get("name_or_path") or model_entry.get("name") or model_entry.get("path")
    return str(model_entry) if model_entry else None


def key_settings(config: dict) -> dict[str, str]:
    """The settings of :data:`KEY_SETTINGS` and of the method's own sections that the config holds, dotted."""
    prefixes = (*KEY_SETTINGS, *METHOD_SECTIONS.get(str(config.get("method")), ()))
    return {key: value for key, value in flatten_config(config).items()
            if any(prefix and (key == prefix or key.startswith(prefix + ".")) for prefix in prefixes)}


def checkpoint_step(checkpoint_dir: Path) -> int | None:
    """``N`` of a ``step-N`` checkpoint directory."""
    match = re.fullmatch(r"step-(\d+)", checkpoint_dir.name)
    return int(match.group(1)) if match else None


def eval_progress(run_dir: Path, up_to_step: int | None) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    """Each logged ``eval/`` metric's first and last ``(step, value)`` up to ``up_to_step`` (all when None), from the
    run's ``metrics.jsonl`` (:func:`posttrain.run_files.read_metrics`: lines cut short by a kill are passed over)."""
    path = run_dir / METRICS_FILE
    series = read_metrics(path)[0] if path.is_file() else {}
    progress = {}
    for key, points in series.items():
        kept = [point for point in points if up_to_step is None or point[0] <= up_to_step]
        if key.startswith(EVAL_PREFIX) and kept:
            progress[key.removeprefix(EVAL_PREFIX)] = (kept[0], kept[-1])
    return progress


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}", *(f"| {' | '.join(row)} |" for row in rows)]


def model_card(run_dir: Path, checkpoint_dir: Path, config: dict, base_model: str | None, load_from: str) -> str:
    """The card (see the module docstring); the usage snippet loads the model from ``load_from`` (the exported
    directory, or the hub repository it is pushed to)."""
    method = config.get("method")
    front_matter = ["library_name: transformers", *([f"base_model: {base_model}"] if base_model else []),
                    "tags:", "- posttrain", *([f"- {method}"] if method else [])]
    summary_lines = [f"- **{key}**: {describe_value(config[key])}" for key in config if key in SUMMARY_KEYS]
    settings = key_settings(config)
    step = checkpoint_step(checkpoint_dir)
    progress = eval_progress(run_dir, step)
    evaluation = table(("metric", "first", "last"), [
        (name, f"{first[1]:.4g} (step {first[0]:g})", f"{last[1]:.4g} (step {last[0]:g})")
        for name, (first, last) in progress.items()]) if progress else [
        f"No evaluation metrics were logged up to this checkpoint (no `eval/` keys in the run's {METRICS_FILE})."]
    config_yaml = yaml.safe_dump(config, sort_keys=False, allow_unicode=True).rstrip()
    return "\n".join([
        "---", *front_matter, "---", "",
        f"# {config.get('name') or run_dir.name} ({checkpoint_dir.name})", "",
        f"Exported by posttrain {posttrain_version()} from checkpoint `{checkpoint_dir.name}` of run "
        f"`{run_dir.name}`, with any LoRA adapter merged into the weights. Base model: "
        f"`{base_model or 'not recorded'}`. Method: `{method or 'not recorded'}`.", "",
        "## Recipe and data", "",
        *(summary_lines or ["- (the run's config names no recipe, model or data fields; see below)"]), "",
        "## Key hyper-parameters", "",
        *(table(("setting", "value"), [(key, f"`{value}`") for key, value in settings.items()]) if settings
          else ["(none recorded; see the configuration below)"]), "",
        "## Evaluation", "", *evaluation, "",
        "## Use", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f"model = AutoModelForCausalLM.from_pretrained({load_from!r})",
        f"tokenizer = AutoTokenizer.from_pretrained({load_from!r})",
        'messages = [{"role": "user", "content": "What is 12 * 7?"}]',
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, "
        "return_tensors=\"pt\")",
        "output = model.generate(**inputs, max_new_tokens=64)",
        "print(tokenizer.decode(output[0][inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))",
        "```", "",
        "## Resolved configuration (config.yaml of the run)", "",
        "```yaml", config_yaml, "```", "",
    ])
