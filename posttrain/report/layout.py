"""Which metrics a report plots, and in what order: the method's key metrics first, then the rest grouped by
prefix. Constants (:func:`posttrain.report.summary.constant_metrics`) are never plotted.

The key metrics are the names each trainer's ``summarize()`` logs (``posttrain/trainers/*.py``) plus the
periodic evaluation's ``eval/accuracy``:

- ``sft``: loss, NLL and ProFit's ``masked_fraction`` (the share of target tokens with p ≤ τ, logged for every
  SFT loss);
- ``grpo``: loss, reward, training accuracy, entropy, KL, completion length, and LaSeR's self-reward loss,
  self-verification F1 / accuracies, mean self-reward and p(z_c);
- ``distill``: loss, the divergence to the teacher, entropy, the held-out entropy of the target-entropy
  stop, and reward / accuracy when a reward is configured;
- ``ppo``: loss, reward, training accuracy, the critic's value loss and explained variance, KL, entropy, completion
  length;
- ``dpo``: loss, reward accuracy and margin, chosen / rejected implicit rewards, the chosen NLL of RPO and ORPO,
  KTO's reference point ``kl``;
- ``reward_model``: loss, pair accuracy and margin, chosen / rejected scores, and the regression objective's
  errors.
"""

from __future__ import annotations

from posttrain.report.runs import RunData

KEY_METRICS: dict[str, list[str]] = {
    "sft": ["loss", "eval/accuracy", "nll", "masked_fraction"],
    "grpo": ["loss", "eval/accuracy", "reward", "accuracy", "entropy", "kl", "completion_length",
             "self_reward_loss", "sv_f1", "sv_acc_correct", "sv_acc_incorrect", "self_reward", "p_reserved"],
    "distill": ["loss", "eval/accuracy", "divergence", "entropy", "heldout_entropy", "reward", "accuracy",
                "token_reward", "completion_length", "distill_weight", "feedback_distilled", "revision_length"],
    "srpo": ["loss", "eval/accuracy", "reward", "accuracy", "correct_fraction", "policy_loss", "distill_loss",
             "distill_weight", "divergence", "entropy", "completion_length"],
    "dpo": ["loss", "eval/accuracy", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward",
            "chosen_nll", "kl"],
    "ppo": ["loss", "eval/accuracy", "reward", "accuracy", "value_loss", "explained_variance", "kl", "entropy",
            "completion_length"],
    "reward_model": ["loss", "accuracy", "margin", "chosen_reward", "rejected_reward", "mse", "mae",
                     "eval/accuracy"],
}
DEFAULT_KEY_METRICS = ["loss", "eval/accuracy", "reward", "accuracy", "entropy"]  # a run without a known method
OTHER_GROUP = "other"


def key_metric_order(runs: list[RunData]) -> list[str]:
    """The key metrics of the runs' methods, in order, each once (several methods: the first run's first)."""
    names: dict[str, None] = {}
    for run in runs:
        method = run.config.get("method", "sft") if run.config else None  # a config without `method` ran sft
        names.update(dict.fromkeys(KEY_METRICS.get(method, DEFAULT_KEY_METRICS)))
    return list(names)


def prefix_of(metric: str) -> str:
    """``eval/accuracy`` → ``eval/``, ``reward_std`` → ``reward_``, ``loss`` → ``loss``."""
    if "/" in metric:
        return metric[: metric.index("/") + 1]
    if "_" in metric:
        return metric[: metric.index("_") + 1]
    return metric


def group_by_prefix(metrics: list[str]) -> list[tuple[str, list[str]]]:
    """``(prefix, metrics)`` groups, each sorted. A ``/`` prefix is a namespace and always its own group; an
    ``_`` prefix shared by one metric only goes to ``other``. ``eval/`` comes first, ``other`` last, the rest
    alphabetically."""
    groups: dict[str, list[str]] = {}
    for metric in metrics:
        groups.setdefault(prefix_of(metric), []).append(metric)
    merged: dict[str, list[str]] = {}
    for prefix, members in groups.items():
        own_group = prefix.endswith("/") or (prefix.endswith("_") and len(members) > 1)
        merged.setdefault(prefix if own_group else OTHER_GROUP, []).extend(members)
    order = sorted(merged, key=lambda prefix: (prefix != "eval/", prefix == OTHER_GROUP, prefix))
    return [(prefix, sorted(merged[prefix])) for prefix in order]


def plot_layout(runs: list[RunData], constants: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """``(key metrics, groups of the other metrics)`` to plot: every logged metric that is not a constant."""
    logged = dict.fromkeys(name for run in runs for name in run.series if name not in constants)
    key = [name for name in key_metric_order(runs) if name in logged]
    rest = [name for name in logged if name not in key]
    return key, group_by_prefix(rest)
