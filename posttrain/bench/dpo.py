"""``posttrain bench dpo --vs trl``: the same DPO steps in posttrain and in TRL 1.16's ``DPOTrainer``.

Both sides train the same model directory in float32 on the CPU with:

* the same pairs — :func:`benchmark_pairs`, ``(steps + warmup_steps) × batch_size`` conversational pairs (a
  correct arithmetic solution against the same solution with one injected error), one epoch in all;
* the same order — posttrain visits them in :class:`~posttrain.trainers.sampler.EpochSampler` order with the
  run's seed; TRL gets the dataset in that order with ``train_sampling_strategy="sequential"``, so step ``k``
  of both sides trains on the same pairs;
* the same per-step work — ``batch_size`` pairs (``2 × batch_size`` right-padded rows, chosen then rejected)
  per optimizer step, no gradient accumulation, ``max_length`` tokens per row at most, AdamW at a constant
  ``lr``, gradients clipped at norm 1. TRL runs a step's rows in one forward pass; posttrain splits them by
  its ``train.micro_batch_tokens`` budget (its default unless ``micro_batch_tokens`` is given; 0 = one pass),
  which gives the same gradient with less padding and activation memory;
* the same loss — sigmoid DPO (Rafailov et al. 2023, "Direct Preference Optimization")
  ``−log σ(β[(π_c − π_ref,c) − (π_r − π_ref,r)])`` with β = ``beta``;
* reference log-probs precomputed before training on both sides (posttrain ``preference.reference:
  precompute``, TRL ``precompute_ref_log_probs=True``).

Precompute and timing are kept apart on both sides: the reference pass runs before the first training step
(posttrain: while the DPO method is built, before its trainer loop; TRL: inside the ``DPOTrainer``
constructor), and only training steps are timed — posttrain's per-step clock (``seconds_per_step`` in
``metrics.jsonl``, batch collation through the optimizer step), TRL's from ``on_step_begin`` to
``on_step_end`` of each step (forward, backward, optimizer; its batch is collated just before
``on_step_begin``). The first ``warmup_steps`` are run but not timed.

Per side, over the timed steps::

    tokens_per_s     = Σ real tokens of the chosen and rejected rows (prompt + completion, no padding)
                       / Σ step durations
    seconds_per_step = mean step duration

plus the peak RSS of the worker process and the last step's loss; ``ratio_tokens_per_s`` and
``ratio_peak_rss`` are posttrain ÷ TRL (:func:`~posttrain.bench.harness.summarize`).
``same_tokens_per_step`` says whether both sides fed the model the same number of real tokens at every step
(same pairs, same order, same truncation).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from posttrain.bench import dpo_posttrain
from posttrain.bench.harness import BenchOptions, alternate, check_device, summarize
from posttrain.bench.on_policy import check_counts
from posttrain.bench.posttrain_side import check_posttrain_set, check_run_config
from posttrain.data.tasks.judge_pairs import make_preference_pairs
from posttrain.errors import ConfigError, PosttrainError
from posttrain.models.loader import resolve_source


def benchmark_pairs(n: int, seed: int = 0) -> list[dict]:
    """``n`` conversational preference pairs (levels 2–3: multi-step solutions), ``prompt``/``chosen``/``rejected``."""
    return [{key: pair[key] for key in ("prompt", "chosen", "rejected")}
            for pair in make_preference_pairs(n, seed, levels=(2, 3))]


class DpoBenchOptions(BenchOptions):
    """``posttrain bench dpo``: ``batch_size`` pairs of at most ``max_length`` tokens per step, the sigmoid loss's
    ``beta``, posttrain's ``micro_batch_tokens``."""

    batch_size: int = 4
    max_length: int = 256
    beta: float = 0.1
    micro_batch_tokens: int | None = None


def run_dpo_benchmark(options: DpoBenchOptions) -> dict:
    """Run both sides ``repeats`` times, alternated, and summarize (medians over repeats, ratios).

    ``micro_batch_tokens`` is posttrain's ``train.micro_batch_tokens`` (None: its default, shown as null in the
    settings; 0: one forward pass per step as TRL); it changes how a step's pairs are split into passes, not the gradient."""
    if options.vs != "trl":
        raise PosttrainError(f"unknown peer {options.vs!r} for the DPO benchmark", fix="use --vs trl")
    check_counts(steps=(options.steps, 1), batch_size=(options.batch_size, 1), max_length=(options.max_length, 2),
                 repeats=(options.repeats, 1), warmup_steps=(options.warmup_steps, 0),
                 micro_batch_tokens=(options.micro_batch_tokens or 0, 0))
    if not options.beta > 0:
        raise ConfigError(f"must be > 0, got {options.beta}", where="--beta", fix="pass a β > 0 (TRL's default is 0.1)")
    check_device(options.device)
    overrides = check_posttrain_set(options.posttrain_set)
    source = resolve_source(options.model)
    if source.kind != "directory":
        raise PosttrainError(f"the DPO benchmark needs a model directory both libraries can load; {options.model!r} is a "
                             f"{source.kind}", fix="pass smollm2-135m or a local HF model directory")
    workdir = Path(tempfile.mkdtemp(prefix="posttrain-bench-dpo-"))
    data_path = workdir / "pairs.jsonl"
    pairs = benchmark_pairs((options.steps + options.warmup_steps) * options.batch_size)
    data_path.write_text("".join(json.dumps(pair) + "\n" for pair in pairs), encoding="utf-8")
    settings = {"model": source.location, "data": str(data_path), "steps": options.steps,
                "warmup_steps": options.warmup_steps, "batch_size": options.batch_size,
                "max_length": options.max_length, "lr": options.lr, "schedule": "constant",
                "loss": "sigmoid", "beta": options.beta, "reference": "precomputed", "seed": 0, "workdir": str(workdir),
                "dtype": "float32", "device": options.device, "micro_batch_tokens": options.micro_batch_tokens,
                "posttrain_set": overrides}
    check_run_config(dpo_posttrain.run_config(settings))
    runs = alternate({"posttrain": ("posttrain.bench.dpo_posttrain", settings),
                      "trl": ("posttrain.bench.dpo_trl", settings)}, options.repeats)
    summary = summarize(runs, "posttrain", "trl", settings)
    summary["same_tokens_per_step"] = all(
        ours["tokens_per_step"] == theirs["tokens_per_step"] for ours in runs["posttrain"] for theirs in runs["trl"]
    )
    return summary

