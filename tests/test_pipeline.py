"""``posttrain pipeline``: stages that start from earlier stages' weights, sharpness comparisons, figures."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from posttrain.errors import ConfigError
from posttrain.models import load_model
from posttrain.trainers.pipeline import final_weights, load_pipeline, run_pipeline
from tests.helpers import train_steps

PROMPTS = [f"Question {i:02d}: write something" for i in range(8)]


def write_pipeline(tmp_path, **extra):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "reference": "1"}) + "\n" for p in PROMPTS))
    common = {"model": {"name": "tiny-random"}, "data": {"train": {"path": str(data)}},
              "optim": {"lr": 1e-2, "warmup_ratio": 0.0}, "eval": {"kind": "none"},
              "train": {"batch_size": 4, "max_steps": 2, "eval_at_start": False}}
    (tmp_path / "rl.yaml").write_text(yaml.safe_dump({
        **common, "method": "grpo",
        "rollout": {"prompts_per_step": 2, "samples_per_prompt": 2, "max_new_tokens": 6}}))
    (tmp_path / "distill.yaml").write_text(yaml.safe_dump({
        **common, "method": "distill",
        "rollout": {"prompts_per_step": 2, "max_new_tokens": 6}, "distill": {"teacher": "snapshot"}}))
    pipeline = {
        "name": "chain", "output_dir": str(tmp_path / "runs"), "overrides": {"seed": 3},
        "stages": [{"name": "first", "recipe": "distill.yaml", "set": {"distill.teacher_temperature": 3.0}},
                   {"name": "second", "recipe": "distill.yaml", "from": "first",
                    "set": {"distill.teacher_temperature": 2.0, "train.max_steps": 1}}],
        "sharpness": [{"model": "second", "reference": "first", "data": str(data), "n": 2, "k": 2,
                       "max_new_tokens": 4}],
        "figures": [{"name": "both", "stages": ["first", "second"], "metrics": ["entropy", "loss"]}],
        **extra,
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path


def test_a_pipeline_chains_weights_and_writes_comparisons_and_figures(tmp_path):
    root = run_pipeline(write_pipeline(tmp_path))
    first, second = root / "first", root / "second"
    assert sorted(train_steps(first)) == [1, 2] and sorted(train_steps(second)) == [1]
    second_config = yaml.safe_load((second / "config.yaml").read_text())
    assert second_config["model"]["name"] == str(final_weights(first))
    assert second_config["seed"] == 3 and second_config["distill"]["teacher_temperature"] == 2.0
    # the second stage started from the first one's final weights: its snapshot teacher at step 0 is those
    start = load_model(str(final_weights(first)))
    assert not torch.equal(start.lm_head.weight, load_model("tiny-random").lm_head.weight)
    report = json.loads((root / "sharpness" / "second-vs-first" / "sharpness.json").read_text())
    assert report["reference"] == str(final_weights(first)) and report["model"] == str(final_weights(second))
    assert (root / "both.png").stat().st_size > 1000
    assert "first" in (root / "report.html").read_text() and "second" in (root / "report.html").read_text()
    before = (first / "metrics.jsonl").read_text()
    run_pipeline(write_pipeline(tmp_path))  # again: finished stages stay as they are, and are not even loaded
    assert (first / "metrics.jsonl").read_text() == before
    assert [json.loads(line)["event"] for line in (first / "history.jsonl").read_text().splitlines()] == [
        "start", "finish"]
    longer = write_pipeline(tmp_path, overrides={"seed": 3, "train.max_steps": 3})
    run_pipeline(longer, only=["first"])  # other settings go through training: this one continues to step 3
    assert sorted(train_steps(first)) == [1, 2, 3]


def test_only_runs_the_named_stages_and_leaves_unfinished_figures_for_later(tmp_path, capsys):
    path = write_pipeline(tmp_path)
    root = run_pipeline(path, only=["first"])
    assert sorted(train_steps(root / "first")) == [1, 2] and not (root / "second").exists()
    assert not (root / "both.png").exists() and not (root / "sharpness").exists()
    printed = capsys.readouterr().out
    assert "skipped figure both: stage(s) second have not run yet" in printed
    assert "skipped sharpness second vs first" in printed
    run_pipeline(path, only=["second"])  # the last stage: now the comparison and the figure are drawn
    assert sorted(train_steps(root / "second")) == [1]
    assert (root / "both.png").stat().st_size > 1000
    assert (root / "sharpness" / "second-vs-first" / "sharpness.json").is_file()


def test_only_takes_patterns_and_comma_lists_and_refuses_a_name_that_matches_nothing(tmp_path):
    from posttrain.trainers.pipeline import selected_stages

    pipeline = load_pipeline(write_pipeline(tmp_path, stages=[
        {"name": name, "recipe": "rl.yaml"} for name in ("dpo-s0", "dpo-s1", "eval-s0", "eval-s1")], figures=[],
        sharpness=[]))
    assert selected_stages(pipeline, ["dpo-s*"]) == ["dpo-s0", "dpo-s1"]
    assert selected_stages(pipeline, ["eval-s1,dpo-s0", "dpo-s0"]) == ["dpo-s0", "eval-s1"]  # pipeline order
    with pytest.raises(ConfigError, match="'dpo-s3' names no stage") as error:
        selected_stages(pipeline, ["dpo-s*", "dpo-s3"])
    assert "dpo-s0, dpo-s1, eval-s0, eval-s1" in error.value.fix


def test_tables_give_each_arm_s_mean_and_sd_over_the_seeds_that_ran(tmp_path, capsys):
    from posttrain.report.stages import seed_table

    stages = [{"name": f"{arm}-s{seed}", "recipe": "rl.yaml"} for arm in ("dpo", "sft") for seed in range(3)]
    tables = [{"name": "seeds", "rows": {"dpo": ["dpo-s*"], "sft": ["sft-s0", "sft-s2"]},
               "metrics": ["accuracy", "eval/accuracy"]}]
    pipeline = load_pipeline(write_pipeline(tmp_path, stages=stages, figures=[], sharpness=[], tables=tables))
    root = tmp_path / "runs"
    for seed, accuracy in enumerate([0.5, 0.7, 0.9]):  # tool summaries
        (root / f"dpo-s{seed}").mkdir(parents=True)
        (root / f"dpo-s{seed}" / "judge.json").write_text(json.dumps({"accuracy": accuracy}))
    (root / "sft-s0").mkdir()  # a training run: its last logged value
    (root / "sft-s0" / "metrics.jsonl").write_text('{"step": 0, "eval/accuracy": 0.1}\n{"step": 5, "eval/accuracy": 0.4}\n')
    names = [stage.name for stage in pipeline.stages]
    table = seed_table(root, "seeds", pipeline.tables[0].rows, pipeline.tables[0].metrics, names)
    summary = json.loads((root / "seeds.json").read_text())
    assert summary["dpo"]["stages"] == ["dpo-s0", "dpo-s1", "dpo-s2"] and summary["sft"]["stages"] == ["sft-s0"]
    dpo = summary["dpo"]["metrics"]["accuracy"]
    assert dpo["n"] == 3 and dpo["mean"] == pytest.approx(0.7) and dpo["sd"] == pytest.approx(0.2)
    assert summary["dpo"]["metrics"]["eval/accuracy"]["n"] == 0
    assert summary["sft"]["metrics"]["eval/accuracy"] == {"n": 1, "mean": 0.4, "sd": None, "values": [0.4]}
    assert "| dpo | 3 | 0.700 ± 0.200 (0.500 0.700 0.900) | — |" in table
    assert (root / "seeds.md").read_text().strip() == table
    with pytest.raises(ConfigError, match="row 'sft': 'sft-s9' matches no stage"):
        load_pipeline(write_pipeline(tmp_path, stages=stages, figures=[], sharpness=[], tables=[
            {"name": "bad", "rows": {"sft": ["sft-s9"]}, "metrics": ["accuracy"]}]))


def test_a_finished_stage_that_saved_nothing_is_not_trained_again(tmp_path, capsys):
    stages = [{"name": "only", "recipe": "distill.yaml", "set": {"train.save_final": False, "train.max_steps": 1}}]
    tables = [{"name": "seeds", "rows": {"one": ["on*"]}, "metrics": ["loss"]}]
    path = write_pipeline(tmp_path, stages=stages, sharpness=[], figures=[], tables=tables)
    root = run_pipeline(path)
    assert "| one | 1 | " in capsys.readouterr().out and (root / "seeds.json").is_file()  # printed and written
    before = (root / "only" / "metrics.jsonl").read_text()
    events = [json.loads(line)["event"] for line in (root / "only" / "history.jsonl").read_text().splitlines()]
    assert events == ["start", "finish"] and not (root / "only" / "checkpoints").exists()
    run_pipeline(path)  # again: a fresh start would have replaced the metrics (their times differ)
    assert (root / "only" / "metrics.jsonl").read_text() == before
    assert "stage only finished and kept no checkpoint to resume from; left as it is" in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "match"), [
    ({"stages": [{"name": "a", "recipe": "rl.yaml", "from": "b"}, {"name": "b", "recipe": "rl.yaml"}]},
     "not an earlier train stage"),
    ({"stages": [{"name": "a", "recipe": "rl.yaml"}, {"name": "a", "recipe": "rl.yaml"}]}, "used twice"),
    ({"figures": [{"name": "f", "stages": ["nope"], "metrics": ["loss"]}]}, "not a stage"),
    ({"stagez": []}, "stagez"),
])
def test_bad_pipeline_files_are_config_errors(tmp_path, extra, match):
    with pytest.raises(ConfigError, match=match):
        load_pipeline(write_pipeline(tmp_path, **extra))


def test_synthesize_and_judge_eval_stages(tmp_path):
    path = write_pipeline(tmp_path, sharpness=[], figures=[])
    pipeline = yaml.safe_load(path.read_text())
    pipeline["stages"] = [
        {"name": "synth", "kind": "synthesize",
         "args": {"judge": "tiny-random", "pairs": "task:arithmetic", "n": 2, "k": 1, "max_new_tokens": 4}},
        pipeline["stages"][0],
        {"name": "judged", "kind": "judge_eval", "from": "first",
         "args": {"data": "task:arithmetic", "n": 2, "max_new_tokens": 4}},
        {"name": "gap", "kind": "gap_eval",  # "final:<stage>" names that stage's final weights
         "args": {"model": "final:first", "n": 2, "k": 2, "template": "grm", "max_new_tokens": 4,
                  "judge_max_new_tokens": 4}},
    ]
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    root = run_pipeline(path)
    assert json.loads((root / "synth" / "summary.json").read_text())["judgments"] == 4
    judged = json.loads((root / "judged" / "judge.json").read_text())
    assert judged["model"] == str(final_weights(root / "first")) and judged["pairs"] == 2
    gap = json.loads((root / "gap" / "gap.json").read_text())
    assert gap["model"] == str(final_weights(root / "first")) and gap["judgments"] == 4
    from posttrain.report.stages import draw_figure

    bars = draw_figure(root, "judges", ["judged", "gap"], ["format_failure_rate", "judge_accuracy"])
    assert bars.stat().st_size > 1000


@pytest.mark.parametrize(("stage", "match"), [
    ({"name": "s", "kind": "synthesize", "recipe": "rl.yaml"}, "a train stage needs a recipe"),
    ({"name": "s", "kind": "plot"}, "unknown kind"),
])
def test_bad_tool_stages(tmp_path, stage, match):
    with pytest.raises(ConfigError, match=match):
        load_pipeline(write_pipeline(tmp_path, stages=[stage], sharpness=[], figures=[]))


SHIPPED_PIPELINES = sorted(path for path in (Path(__file__).parent.parent / "posttrain" / "recipes").glob("*/*.yaml")
                           if "stages" in yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("path", SHIPPED_PIPELINES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_pipelines_and_their_recipes_load(path):
    from posttrain.config import load_config

    assert len(SHIPPED_PIPELINES) >= 6
    pipeline = load_pipeline(path)
    for stage in pipeline.stages:
        if stage.kind == "train":
            overrides = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in stage.set.items()]
            config = load_config(path.parent / stage.recipe, overrides)
            assert config.model.name == "smollm2-135m"


def test_the_chain_table_shows_the_start_and_each_stage_s_last_evaluation():
    from pathlib import Path

    from posttrain.report import RunData
    from posttrain.report.chain import chain_rows, chain_table

    config = {"eval": {"k": 4, "temperature": 1.0}}
    sft = RunData("sft", Path("sft"), config, {
        "eval/accuracy": [(0, 0.1), (12, 0.5), (24, 0.8)], "eval/pass@4": [(0, 0.3), (24, 0.9)],
        "eval/pass@1": [(0, 0.1), (24, 0.8)], "eval/num_prompts": [(0, 40), (24, 40)], "loss": [(1, 2.0)]})
    grpo = RunData("grpo", Path("grpo"), config, {  # no evaluation at its start: the table takes sft's
        "eval/accuracy": [(8, 0.85)], "eval/pass@4": [(8, 0.95)], "eval/pass@1": [(8, 0.85)]})
    metrics, rows = chain_rows([sft, grpo])
    assert metrics == ["eval/accuracy", "eval/pass@1", "eval/pass@4"]  # quality metrics only, pass@k by k
    assert rows == [("start", [0.1, 0.1, 0.3]), ("after sft", [0.8, 0.8, 0.9]), ("after grpo", [0.85, 0.85, 0.95])]
    table = chain_table([sft, grpo]).splitlines()
    assert table[0] == "held-out evaluation (40 held-out prompts, 4 samples each at T = 1)"
    assert table[1].split() == ["accuracy", "pass@1", "pass@4"]
    assert table[2].split() == ["start", "0.100", "0.100", "0.300"]
    assert table[4].split() == ["after", "grpo", "0.850", "0.850", "0.950"]
    # a run without evaluations: no table; a first run evaluated only later: no start row
    assert chain_table([RunData("x", Path("x"), {}, {"loss": [(1, 1.0)]})]) == ""
    assert chain_rows([grpo])[1] == [("after grpo", [0.85, 0.85, 0.95])]
    # runs evaluated differently: each row says how, the title does not
    greedy = RunData("greedy", Path("g"), {"eval": {"k": 1, "temperature": 0.0}},
                     {"eval/accuracy": [(0, 0.2), (5, 0.4)], "eval/num_prompts": [(0, 50), (5, 50)]})
    labels = [label for label, _ in chain_rows([greedy, sft])[1]]
    assert labels == ["start", "after greedy (50 held-out prompts, greedy)",
                      "after sft (40 held-out prompts, 4 samples each at T = 1)"]
    assert chain_table([greedy, sft]).splitlines()[0] == "held-out evaluation"
