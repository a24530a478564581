"""The posttrain command: user errors exit 2 without a traceback; sub-commands work end to end."""

import json

from tests.helpers import read_jsonl, run_cli, tiny_overrides


def test_bad_recipe_key_exits_2_with_a_message_and_no_traceback(tmp_path):
    done = run_cli("train", "-", *tiny_overrides(tmp_path, "bad"), "train.max_stepz=3")
    assert done.returncode == 2
    assert "train.max_stepz" in done.stderr and "unknown key" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_data_file_names_file_line_and_field(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n')
    done = run_cli("train", "-", *tiny_overrides(tmp_path, "bad", **{"data.train": f"{{path: {data}}}"}))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{data}:2" in done.stderr and "completion" in done.stderr


def test_data_make_eval_math_model_info_and_report(tmp_path):
    out = tmp_path / "arith.jsonl"
    made = run_cli("data", "make", "arithmetic", "--n", "6", "--seed", "3", "--out", str(out))
    assert made.returncode == 0, made.stderr
    records = read_jsonl(out)
    assert len(records) == 6 and all("####" in r["answer"] for r in records)

    evaluated = run_cli("eval", "math", "--model", "tiny-random", "--data", str(out), "--max-new-tokens", "8",
                        "--k", "2", "--temperature", "1.0", "--json", "--out", str(tmp_path / "ev"))
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert result["num_prompts"] == 6 and result["num_samples"] == 12
    assert 0.0 <= result["accuracy"] <= 1.0
    samples = read_jsonl(tmp_path / "ev" / "samples.jsonl")
    assert len(samples) == 12 and samples[0]["prompt"] == records[0]["question"]

    info = run_cli("model", "info", "tiny-random")
    assert info.returncode == 0 and "vocab" in info.stdout

    trained = run_cli("train", "-", *tiny_overrides(tmp_path, "r", **{
        "train.max_steps": 2, "train.eval_at_start": True, "eval.kind": "math", "eval.n": 3, "eval.max_new_tokens": 4}))
    assert trained.returncode == 0, trained.stderr
    table = trained.stdout[trained.stdout.index("held-out evaluation (3 held-out prompts, greedy)"):].splitlines()
    assert table[1].split() == ["accuracy", "pass@1", "mean_length"]  # the run ends with its before/after table
    assert table[2].split()[0] == "start" and table[3].split()[:2] == ["after", "r"]
    reported = run_cli("report", str(tmp_path / "r"), "--out", str(tmp_path / "page.html"))
    assert reported.returncode == 0 and (tmp_path / "page.html").read_text().count("<img") >= 2


def test_generate_prints_a_reply():
    done = run_cli("generate", "--model", "tiny-random", "--prompt", "2+2?", "--max-new-tokens", "5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() != ""
