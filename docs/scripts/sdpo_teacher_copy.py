"""Does SDPO's self-teacher copy the attempt it is shown? Used in docs/reproductions.md (GRPO vs SDPO vs SRPO).

    .venv/bin/python docs/scripts/sdpo_teacher_copy.py --model smollm2-135m --questions 16 --samples 8

Samples ``--samples`` completions at T = 1 to each of ``--questions`` level-1 arithmetic questions, then scores each
completion's tokens y_t three ways: under the student (the question alone), under the SDPO teacher whose message
shows the attempt itself (``distill.feedback.template`` with ``{attempt}``, as this project's default was), and under the teacher shown only the
question and the feedback (SDPO's code). The feedback is a correct solution — the task's reference solution, worded
by the ``sibling`` phrase — so every rollout has a teacher. Printed per context and for right / wrong rollouts:

* ``logp``: the mean log-probability of the sampled tokens, and ``top1`` the share of them that are the argmax;
* ``reverse_kl``: the mean per-token KL(student || teacher) over the full vocabulary (SDPO's loss);
* ``p_stop_truncated``: on rollouts cut at the token limit, the mean probability of end-of-turn over their tokens.

A teacher that can read the attempt predicts it almost perfectly (its next tokens are in its context), so distilling
it into the student raises the probability of whatever was sampled, right or wrong, and of not stopping.
"""

from __future__ import annotations

import argparse
import json

import torch

from posttrain.config import FeedbackConfig
from posttrain.data import encode_prompts, make_task
from posttrain.models import load_model, load_tokenizer
from posttrain.rewards.builtin import math_reward
from posttrain.trainers.feedback import RolloutFeedback, teacher_record

# the default distill.feedback.template before it left the attempt out
WITH_ATTEMPT = "{prompt}\n\nYour earlier attempt:\n{attempt}\n\n{feedback}\n\nCorrectly solve the original question."


def sample(model, tokenizer, prompt_ids: list[int], n: int, max_new_tokens: int) -> list[tuple[list[int], bool]]:
    """``n`` completions at T = 1: their token ids (ending in end-of-turn when finished) and whether they finished."""
    prompt = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=1.0,
                             top_p=1.0, top_k=0, max_new_tokens=max_new_tokens, num_return_sequences=n,
                             pad_token_id=tokenizer.pad_token_id)
    completions = []
    for row in out[:, len(prompt_ids):].tolist():
        finished = tokenizer.eos_token_id in row
        completions.append((row[: row.index(tokenizer.eos_token_id) + 1] if finished else row, finished))
    return completions


def token_distributions(model, prompt_ids: list[int], completion: list[int]) -> torch.Tensor:
    """Log-probabilities ``[T, V]`` of the next token at each completion position after ``prompt_ids``."""
    ids = torch.tensor([prompt_ids + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    return torch.log_softmax(logits, dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    tokenizer, model = load_tokenizer(args.model), load_model(args.model, dtype="float32", device="cpu").eval()
    records = make_task("arithmetic", args.questions, args.seed, levels=[1])
    contexts = {"with_attempt": FeedbackConfig(template=WITH_ATTEMPT), "without_attempt": FeedbackConfig()}
    sums: dict[str, dict[str, list[float]]] = {}
    for record, prompt_ids in zip(records, encode_prompts(records, tokenizer), strict=True):
        demonstration = FeedbackConfig().phrase("sibling").format(text=record["answer"])
        feedback = RolloutFeedback(("sibling",), demonstration)
        for completion, finished in sample(model, tokenizer, prompt_ids, args.samples, args.max_new_tokens):
            text = tokenizer.decode(completion, skip_special_tokens=True)
            outcome = "right" if math_reward("", text, record) == 1.0 else "wrong"
            targets = torch.tensor(completion)
            student = token_distributions(model, prompt_ids, completion)
            scored = {"student": student}
            for name, cfg in contexts.items():
                teacher_ids = encode_prompts([teacher_record(record, text, feedback, cfg)], tokenizer)[0]
                scored[name] = token_distributions(model, teacher_ids, completion)
            for name, logps in scored.items():
                row = sums.setdefault(f"{name}/{outcome}", {"logp": [], "top1": [], "reverse_kl": [], "stop": []})
                row["logp"].append(logps.gather(1, targets[:, None]).mean().item())
                row["top1"].append((logps.argmax(-1) == targets).float().mean().item())
                row["reverse_kl"].append((student.exp() * (student - logps)).sum(-1).mean().item())
                if not finished:
                    row["stop"].append(logps[:, tokenizer.eos_token_id].exp().mean().item())
    summary = {key: {"rollouts": len(row["logp"]), "logp": sum(row["logp"]) / len(row["logp"]),
                     "top1": sum(row["top1"]) / len(row["top1"]),
                     "reverse_kl": sum(row["reverse_kl"]) / len(row["reverse_kl"]),
                     "truncated": len(row["stop"]),
                     "p_stop_truncated": sum(row["stop"]) / len(row["stop"]) if row["stop"] else None}
               for key, row in sorted(sums.items())}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
