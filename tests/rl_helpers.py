"""Builders shared by the RL trainer tests: tiny-model settings, custom reward files, direct method calls."""

import json

import torch

from posttrain.config import load_config
from posttrain.models import tiny_model, tiny_tokenizer
from posttrain.trainers.distributed import Processes
from posttrain.trainers.rl import RLMethod
from tests.helpers import tiny_overrides

REWARD_SOURCE = '''
import string


def lower(prompt, completion, record):
    """Share of the completion's characters that are lowercase ASCII letters."""
    return sum(c in string.ascii_lowercase for c in completion) / max(len(completion), 1)


def even(prompt, completion, record):
    """1 when the completion has an even number of characters: a 0/1 verifier."""
    return float(len(completion) % 2 == 0)


def not_a_number(prompt, completion, record):
    return float("nan")
'''
REWARDS: dict = {}
exec(REWARD_SOURCE, REWARDS)  # the functions the runs load from the file, for computing expectations

G = 4
PROMPTS = [f"Question {i:02d}: write something" for i in range(8)]  # one token length for all
VARIED_PROMPTS = ["Q: 1+1=", "Say hi:", "abc", "The quick brown fox jumps"]  # left-padded in generation
C_REF = -10.72  # log p(z_c) of the EOS-prone model is about -5.7, so r_s = 0.1·(log p − C_REF) ≈ 0.5
LASER = ["rl.laser.enabled=true", "rl.laser.verifier=even", f"rl.laser.c_ref={C_REF}", "rl.laser.tau=0.5"]
LASER += ["rl.laser.filter_threshold=0", "rl.laser.alpha=1", "train.batch_size=64"]


def reward(name: str, value) -> float:
    return REWARDS[name]("", value, {})


def rewards_override(tmp_path, *specs: str) -> str:
    """``"lower", "even:0.5"`` → ``rl.rewards=`` those functions of the test's reward file (weight after ``:``)."""
    functions = []
    for spec in specs:
        name, _, weight = spec.partition(":")
        functions.append(f"{{path: {tmp_path / 'r.py'}:{name}, weight: {weight or 1}}}")
    return f"rl.rewards={{functions: [{', '.join(functions)}]}}"


def rl_overrides(tmp_path, name, *settings: str, references: bool = True) -> list[str]:
    """A 3-step GRPO run of the tiny model on 8 prompts (2 per step, G = 4), then ``key=value`` settings."""
    (tmp_path / "r.py").write_text(REWARD_SOURCE)
    data = tmp_path / "prompts.jsonl"
    rows = [{"prompt": p, **({"reference": "1"} if references else {})} for p in PROMPTS]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    values = {"method": "grpo", "data.train": f"{{path: {data}}}", "train.max_steps": 3, "optim.lr": 1e-2}
    values.update(
        {"train.batch_size": G, "rollout.samples_per_prompt": G, "rollout.prompts_per_step": 2, "rollout.max_new_tokens": 8}
    )
    return [*tiny_overrides(tmp_path, name, **values), rewards_override(tmp_path, "lower"), *settings]


def rl_config(tmp_path, name, *settings: str, references: bool = True):
    return load_config(None, rl_overrides(tmp_path, name, *settings, references=references))


# ------------------------------------------------------------------------------------------ whole runs


class RecordingEngine:
    """A rollout engine that keeps its latest generations for the test to inspect."""

    def __init__(self, engine):
        self.engine = engine
        self.generations = []

    def generate(self, prompt_ids, params):
        self.generations = self.engine.generate(prompt_ids, params)
        return self.generations


def eos_prone_model():
    """The tiny model, changed so that about half of 12-token completions end with EOS and the log-prob
    of the reserved token (id 0) varies visibly with the context."""
    model = tiny_model()
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] += 1.0  # a constant direction in the residual stream...
        model.lm_head.weight[tiny_tokenizer().eos_token_id, 0] = 0.3  # ...that raises the EOS logit
        model.lm_head.weight[0, 1:] *= 30
    return model


def direct_method(tmp_path, model, *settings: str, prepare=None,
                  method_class: type[RLMethod] = RLMethod) -> tuple[RLMethod, list]:
    """An RLMethod (or a subclass: ``method_class``) over VARIED_PROMPTS (all in one step, 12 new tokens) and the
    micro-batches of step 0 (``prepare(method)`` called before the step)."""
    overrides = [f"rollout.prompts_per_step={len(VARIED_PROMPTS)}", "rollout.max_new_tokens=12", *settings]
    config = rl_config(tmp_path, "direct", *overrides)
    records = [{"prompt": p, "reference": "1"} for p in VARIED_PROMPTS]
    method = method_class(config, records, model, tiny_tokenizer(), Processes("cpu"))
    method.engine = RecordingEngine(method.engine)
    if prepare is not None:
        prepare(method)
    share = list(range(len(VARIED_PROMPTS)))
    return method, method.step_batches(model, share, share, step=0)


def gradients(model, method, work) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    total = 0.0
    for batch in work.micro_batches:
        loss, _ = method.loss(model, batch, work.totals)
        loss.backward()
        total += float(loss.detach())
    return total, [p.grad.clone() for p in model.parameters()]


def manual_logprobs(model, generation, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``log softmax(logits / T)`` of each completion token from the full logits of its unpadded row,
    and those tempered logits."""
    ids = torch.tensor([[*generation.prompt_ids, *generation.token_ids]])
    logits = model(input_ids=ids).logits[0, len(generation.prompt_ids) - 1 : -1] / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(generation.token_ids)[:, None])[:, 0], logits


def padded(rows: list[torch.Tensor]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])
