"""The pointwise judge as a scorer of preference pairs (J1's PoS, Whitehouse et al. 2025, arXiv 2505.10320).

A pointwise template (``pointwise``, ``j1_pointwise`` or the user's) scores one response at a time. Both responses
of every pair are scored, ``params.n`` samples each; sample ``k`` of the chosen response and sample ``k`` of the
rejected one form trial ``k``, right when ``s_chosen > s_rejected`` (both parsed; a tie is wrong), the pairing of
J1's pointwise reward (:mod:`posttrain.judges.consistency`). One order, ``single``: a pointwise judge sees no
position. Rows as :mod:`posttrain.judges.scorers` writes them, so :mod:`posttrain.judges.metrics` and
:mod:`posttrain.judges.voting` (mean score over the samples) apply unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from posttrain.data import encode_prompts
from posttrain.judges.consistency import ordered_right
from posttrain.judges.formats import JudgeTemplate, resolve_template
from posttrain.judges.metrics import judge_metrics
from posttrain.judges.pairs import length_side, pair_texts
from posttrain.judges.scorers import JudgeResult
from posttrain.judges.voting import pointwise_verdict
from posttrain.rollout import RolloutEngine, SamplingParams

SIDES = ("chosen", "rejected")


def judge_pairs_pointwise(engine: RolloutEngine, pairs: Sequence[dict], template: str | JudgeTemplate = "j1_pointwise",
                          params: SamplingParams | None = None) -> JudgeResult:
    """Score both responses of every pair, ``params.n`` samples each, in one generation call (module docstring)."""
    template = resolve_template(template, "pointwise")
    params = params or SamplingParams(temperature=0.0, max_new_tokens=512)
    entries, messages = [], []
    for index, pair in enumerate(pairs):
        question, chosen, rejected = pair_texts(pair, index)
        common = {"pair_index": index, "order": "single", "subset": pair.get("subset"),
                  "length": length_side(chosen, rejected)}
        for side, response in zip(SIDES, (chosen, rejected), strict=True):
            entries.append((common, side))
            messages.append(template.render(question, response))
    outputs: dict[tuple[int, int], dict] = {}
    for generation in engine.generate(encode_prompts([{"prompt": m} for m in messages], engine.tokenizer), params):
        common, side = entries[generation.prompt_index]
        trial = outputs.setdefault((common["pair_index"], generation.sample_index),
                                   {**common, "sample_index": generation.sample_index})
        trial[f"{side}_score"] = template.parse(generation.text)
        trial[f"{side}_output"] = generation.text
    rows = []
    for key in sorted(outputs):
        row = outputs[key]
        chosen, rejected = row.get("chosen_score"), row.get("rejected_score")
        rows.append({**row, "verdict": pointwise_verdict(chosen, rejected), "correct": ordered_right(chosen, rejected)})
    return JudgeResult(judge_metrics(rows), rows)
