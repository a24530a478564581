"""The ``likelihood`` reward: the current policy's log-probability of the reference answer after its own reasoning.

Kwiatkowski et al. 2026, "Likelihood-Based Reward Designs for General LLM Reasoning" (arXiv 2602.03979): for a
prompt ``p`` with reference answer ``a*`` and a sampled chain of thought ``z``, ``R(z) = log π_θ(a* | p, z)``,
the teacher-forced log-probability of ``a*`` appended after ``z`` — a reward for tasks without a verifier, and
of the variants they compare (probability, per-token mean, JEPO) the one that works in both verifiable and
long-form settings. Scoring needs one forward pass over ``p + z + a*`` and no answer sampling.

How ``a*`` is appended (the paper leaves the format to the task; ours, configurable):

* the reasoning ``z`` is the completion cut before its own final answer — before the first line that starts
  with ``answer_marker`` (default ``####``, the arithmetic task's final line), trailing white space removed; a
  completion without that line is kept whole;
* then ``answer_template`` (default ``"\\n#### {reference}"``): the text before ``{reference}`` belongs to the
  context, only the reference's tokens are scored — ``R = Σ_t log π_θ(a*_t | p, z, prefix, a*_<t)``;
* prompt (chat template, as generated), context and reference are tokenized separately and concatenated, so
  ``a*`` has the same tokens in every completion's score.

The reward reads the policy itself, so the on-policy trainer hands it the learner's model before training
(:meth:`posttrain.rewards.base.Reward.attach_policy`, called by ``RewardSet.prepare``); it scores with the
weights of the moment of the call (the rollouts' weights), without gradient, in eval mode, ``batch_size``
sequences per forward. It needs each record's ``reference``. Under FSDP every process scores its own rollouts,
in as many forward passes as the others (equal rollouts per process).
"""

from __future__ import annotations

import re

from posttrain.data import encode_prompts
from posttrain.errors import ConfigError
from posttrain.models.self_scores import continuation_logprobs
from posttrain.rewards.base import Reward
from posttrain.rewards.registry import register_reward

REFERENCE_PLACEHOLDER = "{reference}"


def _check_likelihood_args(args: dict) -> None:
    template = args.get("answer_template", "\n#### {reference}")
    if not isinstance(template, str) or template.count(REFERENCE_PLACEHOLDER) != 1 or not template.endswith(
            REFERENCE_PLACEHOLDER):
        raise ConfigError(f"answer_template {template!r} must end with the one {REFERENCE_PLACEHOLDER} placeholder",
                          where="rewards.functions[likelihood].args.answer_template",
                          fix='write the text that introduces the answer, then {reference}: "\\n#### {reference}"')
    if int(args.get("batch_size", 8)) < 1:
        raise ConfigError("batch_size must be at least 1", where="rewards.functions[likelihood].args.batch_size",
                          fix="give a positive number of sequences per forward pass")


def reasoning_before_answer(completion: str, marker: str | None) -> str:
    """The completion before the first line that starts with ``marker`` (all of it without one), right-stripped."""
    if marker:
        found = re.search(rf"(?m)^[ \t]*{re.escape(marker)}", completion)
        if found is not None:
            completion = completion[:found.start()]
    return completion.rstrip()


@register_reward("likelihood", time_limited=False, requires=("reference",), check=_check_likelihood_args)
class LikelihoodReward(Reward):
    """``log π_θ(a* | p, z)`` of every completion under the current policy (module docstring)."""

    def __init__(self, answer_template: str = "\n#### {reference}", answer_marker: str | None = "####",
                 batch_size: int = 8):
        self.prefix = answer_template[: -len(REFERENCE_PLACEHOLDER)]
        self.marker, self.batch_size = answer_marker, int(batch_size)
        self.tokenizer = self.model = None

    def prepare(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def attach_policy(self, model) -> None:
        self.model = model

    def sequences(self, completions, columns) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids of ``prompt + reasoning + prefix`` and of the reference, per completion."""
        records = [{"prompt": prompt} for prompt in columns["prompt"]]
        prompt_ids = encode_prompts(records, self.tokenizer)
        encode = lambda text: self.tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        prefixes, answers = [], []
        for prompt, completion, reference in zip(prompt_ids, completions, columns["reference"], strict=True):
            prefixes.append([*prompt, *encode(reasoning_before_answer(completion, self.marker) + self.prefix)])
            answers.append(encode(str(reference)))
        return prefixes, answers

    def __call__(self, prompts, completions, **columns):
        if self.model is None or self.tokenizer is None:
            raise ConfigError("the likelihood reward scores with the policy being trained, and none was attached",
                              fix="use it in an on-policy RL recipe (method grpo and its family), whose trainer "
                                  "attaches the policy")
        prefixes, answers = self.sequences(completions, columns)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return continuation_logprobs(self.model, prefixes, answers, pad, self.batch_size)
