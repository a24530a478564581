"""Master keys and Master-RM's augmentation of judge and reward-model training pairs.

Zhao et al. 2025, "One Token to Fool LLM-as-a-Judge" (arXiv 2507.08794; methods.md §7.5): judges accept
*master keys*, responses that say nothing — punctuation (``":"``, ``"."``, ``" "``) and reasoning openers
(``"Thought process:"``, ``"Let's solve this problem step by step."``, ``"Solution"``). :data:`MASTER_KEYS`
holds those, the question repeated back (``question``, written :data:`QUESTION_KEY`) and an empty answer
(``empty``); :mod:`posttrain.evals.masterkey` probes a judge with them.

The paper's fix, Master-RM, adds to the judge's training data responses truncated to their first sentence,
labelled wrong. :func:`add_masterkey_negatives` does that for preference pairs (``prompt``, ``chosen``,
``rejected``, the data of judge RL, judge synthesis and Bradley–Terry reward models): it appends
``round(fraction · n)`` new pairs, each a copy of a seeded-random pair of the data whose ``rejected`` is

* even-numbered new pairs: a master key from :data:`TRAINING_KEYS`, in turn; every key except the blank ones
  (``space``, ``empty``: a blank response is refused by the preference checks) — the paper's "non-word tokens
  and reasoning openers" as negatives;
* odd-numbered ones: the pair's ``chosen`` response truncated to its first sentence (:func:`first_sentence`),
  the Master-RM negatives proper; when that sentence is the whole response (nothing to truncate), a master key
  instead.

Each new pair keeps its source's ``chosen`` (the winner), has a ``critique`` saying the rejected response
answers nothing (the source's named the source's error), and says what it is in ``masterkey`` (the key's name or ``first_sentence``) and ``subset``
(``masterkey-<name>``). Only training data is augmented: the caller applies this to ``data.train``, never to
held-out pairs.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from posttrain.errors import ConfigError, DataError

QUESTION_KEY = "{question}"
MASTER_KEYS = {
    "colon": ":",
    "period": ".",
    "space": " ",
    "thought_process": "Thought process:",
    "step_by_step": "Let's solve this problem step by step.",
    "solution": "Solution",
    "question": QUESTION_KEY,
    "empty": "",
}
TRAINING_KEYS = tuple(name for name, key in MASTER_KEYS.items() if key.strip())
FIRST_SENTENCE = "first_sentence"
SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


def first_sentence(text: str) -> str | None:
    """``text`` up to the end of its first sentence (``.``, ``!`` or ``?`` before a space or the end, or a line
    break), stripped; None when that is the whole text or nothing (no truncated response to make)."""
    stripped = text.strip()
    end = SENTENCE_END.search(stripped)
    if end is None:
        return None
    sentence = stripped[: end.end()].strip()
    return sentence if sentence and sentence != stripped else None


def _text(value: str | list[dict]) -> str:
    return value if isinstance(value, str) else str(value[-1]["content"])


def _replaced(value: str | list[dict], text: str) -> str | list[dict]:
    """``value`` (text, or messages whose last one is the response) with its response text replaced."""
    return text if isinstance(value, str) else [*value[:-1], {**value[-1], "content": text}]


def _question_text(record: dict) -> str:
    prompt = record.get("question") or record.get("prompt") or ""
    return prompt if isinstance(prompt, str) else "\n".join(str(m["content"]) for m in prompt if m["role"] == "user")


def add_masterkey_negatives(records: Sequence[dict], fraction: float, seed: int = 0) -> list[dict]:
    """``records`` followed by ``round(fraction · len(records))`` master-key pairs (module docstring); the same
    arguments give the same pairs. A DataError for a record that is not a ``prompt``/``chosen``/``rejected`` pair."""
    if not 0 <= fraction <= 10:
        raise ConfigError(f"masterkey_negatives is {fraction}, not a fraction of the pairs in [0, 10]",
                          where="data.masterkey_negatives", fix="give e.g. 0.2 (one new pair per five)")
    records = list(records)
    count = round(fraction * len(records))
    if count == 0:
        return records
    for index, record in enumerate(records):
        if not all(isinstance(record.get(key), str | list) and record.get(key) for key in ("chosen", "rejected")):
            raise DataError("master-key negatives need preference pairs, and this record has no chosen/rejected",
                            where=record.get("_where") or f"record {index}",
                            fix="give prompt/chosen/rejected pairs, or set data.masterkey_negatives: 0")
    rng = random.Random(f"masterkey-negatives:{seed}")
    sources = rng.sample(range(len(records)), count) if count <= len(records) else \
        [rng.randrange(len(records)) for _ in range(count)]
    added = []
    for number, source in enumerate(sources):
        record = records[source]
        name = TRAINING_KEYS[(number // 2) % len(TRAINING_KEYS)]
        text = first_sentence(_text(record["chosen"])) if number % 2 else None
        if text is not None:
            name, critique = FIRST_SENTENCE, f"The response stops after its first sentence ({text!r}) and never " \
                "answers the question."
        else:
            key = MASTER_KEYS[name]
            text = _question_text(record) if key == QUESTION_KEY else key
            critique = f"The response is only {text!r}, which says nothing about the question."
        where = record.get("_where") or f"record {source}"
        added.append({**record, "rejected": _replaced(record["rejected"], text), "critique": critique,
                      "masterkey": name, "subset": f"masterkey-{name}", "_where": f"{where} (master-key negative)"})
    return records + added
