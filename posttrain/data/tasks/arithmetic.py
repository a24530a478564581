"""Synthetic multi-step integer word problems with step-by-step solutions and exact final answers.

A problem is a short program over one running quantity: a starting value followed by operations
``+ n``, ``- n`` or ``* m``, applied left to right. Every intermediate value is a non-negative integer and the
numbers are small, so a 135M-parameter model can learn the task within minutes. Levels:

1. one addition or subtraction (``Tom has 3 apples and buys 5 more``);
2. two additions or subtractions;
3. three steps with a multiplication: either groups (``3 boxes with 4 pencils each``) then two
   additions/subtractions, or one addition/subtraction, cutting every item into ``m`` pieces, and one more
   addition/subtraction counted in pieces.

Names, objects, verbs and question phrasings are drawn from small template lists so the text varies.
Each record is ``{"question", "answer", "reference", "level", "ops"}``: ``answer`` is the solution, one line a
step (``a + b = c``), ending in ``#### N``; ``reference`` is ``"N"``; ``ops`` is the program
(``[["start", 3], ["+", 5]]``) the text was made from.

Generation is seeded (``random.Random``, string seeding, independent of ``PYTHONHASHSEED``): the same
arguments give the same records. Questions are distinct within a call. Each question belongs to exactly one
split by a hash of its text (about 10% ``held_out``), so train and held-out data never share a question,
whatever their sizes and seeds.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable

from posttrain.errors import ConfigError

LEVELS = (1, 2, 3)
SPLITS = ("train", "held_out")
HELD_OUT_SHARE = 26  # of 256 hash buckets: about 10% of all questions are held out

# fmt: off
NAMES = [
    ("Tom", "he"), ("Mia", "she"), ("Sam", "he"), ("Lena", "she"), ("Omar", "he"), ("Ava", "she"),
    ("Ben", "he"), ("Zoe", "she"), ("Leo", "he"), ("Nina", "she"), ("Raj", "he"), ("Emma", "she"),
    ("Ivan", "he"), ("Sara", "she"), ("Kofi", "he"), ("Lucy", "she"), ("Hugo", "he"), ("Maya", "she"),
    ("Eli", "he"), ("Rosa", "she"),
]
OBJECTS = [
    "apples", "marbles", "stickers", "pencils", "books", "cards", "shells", "coins", "balloons",
    "cookies", "toy cars", "stamps", "flowers", "eggs", "crayons",
]
GROUPED_OBJECTS = [thing for thing in OBJECTS if thing not in ("books", "toy cars", "flowers")]
CONTAINERS = [("box", "boxes"), ("bag", "bags"), ("pack", "packs"), ("jar", "jars"), ("basket", "baskets")]
CUTTABLE = [
    ("pizza", "pizzas", "slices"), ("orange", "oranges", "slices"), ("cake", "cakes", "pieces"),
    ("chocolate bar", "chocolate bars", "pieces"), ("pie", "pies", "slices"), ("loaf of bread", "loaves of bread", "slices"),
]
STARTS = ["{Name} has {n} {things}.", "{Name} collects {n} {things}.", "There are {n} {things} in {Name}'s bag."]
# fmt: on
# (sentence in the question, phrase in the solution)
ADDITIONS = [
    ("{Pron} buys {n} more {things}.", "buys {n} more"),
    ("{Pron} finds {n} more {things}.", "finds {n} more"),
    ("A friend gives {obj} {n} {things}.", "gets {n} from a friend"),
    ("{Pron} wins {n} {things} in a game.", "wins {n}"),
    ("{Poss} aunt sends {obj} {n} {things}.", "gets {n} from {poss} aunt"),
]
SUBTRACTIONS = [
    ("{Pron} gives {n} {things} to a friend.", "gives away {n}"),
    ("{Pron} loses {n} of them.", "loses {n}"),
    ("{Pron} sells {n} {things}.", "sells {n}"),
    ("{Pron} trades away {n} {things}.", "trades away {n}"),
    ("{Pron} shares {n} {things} with {poss} sister.", "gives {n} to {poss} sister"),
]
QUESTIONS = ["How many {things} does {Name} have now?", "How many {things} does {pron} have at the end?"]
QUESTIONS_AFTER_LOSS = ["How many {things} does {Name} have left?", "How many {things} are left?"]


def make_records(
    n: int,
    seed: int,
    levels: str | Iterable[int] = LEVELS,
    split: str = "train",
) -> list[dict]:
    """``n`` distinct problems of ``split``, levels taken in turn from ``levels`` (``"1,2"`` or ``[1, 2]``)."""
    levels = parse_levels(levels)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}", fix=f"use one of: {', '.join(SPLITS)}")
    if n < 0:
        raise ConfigError(f"the number of problems must be at least 0, got {n}", fix="give n >= 0")
    rng = random.Random(f"arithmetic:{seed}:{split}")
    records: list[dict] = []
    seen: set[str] = set()
    attempts = 0
    while len(records) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ConfigError(
                f"could not make {n} distinct {split} problems at levels {list(levels)} (made {len(records)})",
                fix="ask for fewer problems, or include higher levels",
            )
        level = levels[len(records) % len(levels)]
        record = make_problem(rng, level)
        if record["question"] in seen or question_split(record["question"]) != split:
            continue
        seen.add(record["question"])
        records.append(record)
    return records


def make_problem(rng: random.Random, level: int) -> dict:
    """One problem of ``level`` as a record (see the module docstring)."""
    name, pronoun = rng.choice(NAMES)
    words = {
        "Name": name,
        "pron": pronoun,
        "Pron": pronoun.capitalize(),
        "obj": "him" if pronoun == "he" else "her",
        "poss": "his" if pronoun == "he" else "her",
        "Poss": "His" if pronoun == "he" else "Her",
    }
    problem = _Problem(words)
    if level == 1 or level == 2:
        problem.words["things"] = rng.choice(OBJECTS)
        problem.start(rng.randint(2, 20), rng.choice(STARTS))
        for _ in range(level):
            problem.add_or_subtract(rng, 2, 10)
    elif level == 3 and rng.random() < 0.5:
        container, containers = rng.choice(CONTAINERS)
        problem.words.update(things=rng.choice(GROUPED_OBJECTS), container=container, containers=containers)
        problem.groups(rng.randint(2, 5), rng.randint(2, 6))
        problem.add_or_subtract(rng, 2, 10)
        problem.add_or_subtract(rng, 2, 10)
    elif level == 3:
        item, items, pieces = rng.choice(CUTTABLE)
        problem.words.update(things=items, item=item)
        problem.start(rng.randint(2, 6), rng.choice(STARTS))
        problem.add_or_subtract(rng, 1, 3)
        problem.words["things"] = pieces
        problem.cut(rng.randint(2, 8))
        problem.add_or_subtract(rng, 2, 10)
    else:
        raise ConfigError(f"unknown level {level!r}", fix=f"use levels from {list(LEVELS)}")
    questions = QUESTIONS_AFTER_LOSS if problem.ops[-1][0] == "-" else QUESTIONS
    problem.sentences.append(rng.choice(questions).format(**problem.words))
    return {
        "question": " ".join(problem.sentences),
        "answer": "\n".join([*problem.steps, f"#### {problem.value}"]),
        "reference": str(problem.value),
        "level": level,
        "ops": problem.ops,
    }


def question_split(question: str) -> str:
    """The split a question belongs to, fixed by the first byte of the SHA-256 of its text."""
    bucket = hashlib.sha256(question.encode("utf-8")).digest()[0]
    return "held_out" if bucket < HELD_OUT_SHARE else "train"


def parse_levels(levels: str | int | Iterable[int]) -> tuple[int, ...]:
    """Levels from ``"1,2"``, ``2`` or ``[1, 2]``; each must be one of :data:`LEVELS`."""
    if isinstance(levels, int):
        levels = [levels]
    if isinstance(levels, str):
        parts = [part.strip() for part in levels.split(",") if part.strip()]
        if not all(part.isdigit() for part in parts):
            raise ConfigError(
                f"levels must be comma-separated integers, got {levels!r}", fix="e.g. levels=1,2"
            )
        levels = [int(part) for part in parts]
    parsed = tuple(levels)
    if not parsed or any(level not in LEVELS for level in parsed):
        raise ConfigError(
            f"levels must be chosen from {list(LEVELS)}, got {list(parsed)}", fix="e.g. levels=1,2,3"
        )
    return parsed


class _Problem:
    """A problem being written: its question sentences, solution steps, program and running value."""

    def __init__(self, words: dict[str, str]):
        self.words = words
        self.sentences: list[str] = []
        self.steps: list[str] = []
        self.ops: list[list] = []
        self.value = 0

    def start(self, n: int, template: str) -> None:
        self.value = n
        self.ops.append(["start", n])
        self.sentences.append(template.format(n=n, **self.words))
        self.steps.append("{Name} starts with {n} {things}.".format(n=n, **self.words))

    def groups(self, count: int, size: int) -> None:
        self.value = count * size
        self.ops += [["start", count], ["*", size]]
        self.sentences.append(
            "{Name} buys {count} {containers} of {things}. Each {container} has {size} {things}.".format(
                count=count, size=size, **self.words
            )
        )
        self.steps.append(
            "{count} {containers} with {size} {things} each: {count} * {size} = {value}.".format(
                count=count, size=size, value=self.value, **self.words
            )
        )

    def cut(self, pieces: int) -> None:
        before, self.value = self.value, self.value * pieces
        self.ops.append(["*", pieces])
        self.sentences.append("{Pron} cuts each {item} into {m} {things}.".format(m=pieces, **self.words))
        self.steps.append(
            "Each {item} gives {m} {things}: {before} * {m} = {value}.".format(
                m=pieces, before=before, value=self.value, **self.words
            )
        )

    def add_or_subtract(self, rng: random.Random, low: int, high: int) -> None:
        """Add or subtract a number in ``[low, high]``, never going below zero."""
        if self.value >= low and rng.random() < 0.5:
            n = rng.randint(low, min(high, self.value))
            sentence, phrase = rng.choice(SUBTRACTIONS)
            operator, after = "-", self.value - n
        else:
            n = rng.randint(low, high)
            sentence, phrase = rng.choice(ADDITIONS)
            operator, after = "+", self.value + n
        self.ops.append([operator, n])
        self.sentences.append(sentence.format(n=n, **self.words))
        self.steps.append(
            "{Pron} {phrase}: {before} {operator} {n} = {after}.".format(
                phrase=phrase.format(n=n, **self.words),
                before=self.value,
                operator=operator,
                n=n,
                after=after,
                **self.words,
            )
        )
        self.value = after
