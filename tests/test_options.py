"""Tool options objects: one per evaluation, judge-data tool and benchmark, shared by the CLI, pipeline stages and
Python callers (:mod:`posttrain.rollout.options`)."""

import json

import pytest
import typer
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

import posttrain.evals.bon as bon
from posttrain.bench.distill import DistillBenchOptions
from posttrain.bench.dpo import DpoBenchOptions
from posttrain.bench.grpo import GrpoBenchOptions
from posttrain.bench.sft import SftBenchOptions
from posttrain.cli import app
from posttrain.errors import ConfigError
from posttrain.evals.bon import BonOptions
from posttrain.evals.gap import GapOptions
from posttrain.evals.judge import JudgeEvalOptions, run_judge_eval
from posttrain.evals.masterkey import MasterkeyOptions
from posttrain.evals.run import MathOptions, run_math_eval
from posttrain.evals.selfreward import SelfRewardOptions
from posttrain.evals.sharpness import SharpnessOptions
from posttrain.judges.labeling import LabelOptions
from posttrain.judges.metarm_data import MetarmDataOptions
from posttrain.judges.similarity import AgreementOptions
from posttrain.judges.synthesis import SynthesisOptions
from posttrain.trainers.pipeline import load_pipeline, run_pipeline
from tests.test_pipeline import write_pipeline

COMMANDS = {
    ("eval", "math"): MathOptions, ("eval", "selfreward"): SelfRewardOptions, ("eval", "judge"): JudgeEvalOptions,
    ("eval", "masterkey"): MasterkeyOptions, ("eval", "gap"): GapOptions, ("eval", "sharpness"): SharpnessOptions,
    ("eval", "bon"): BonOptions, ("eval", "critique-agreement"): AgreementOptions,
    ("judge", "synthesize"): SynthesisOptions, ("judge", "label"): LabelOptions,
    ("judge", "metarm-data"): MetarmDataOptions,
    ("bench", "sft"): SftBenchOptions, ("bench", "dpo"): DpoBenchOptions, ("bench", "grpo"): GrpoBenchOptions,
    ("bench", "distill"): DistillBenchOptions,
}


@pytest.mark.parametrize(("path", "options_class"), list(COMMANDS.items()), ids=lambda v: "-".join(v)
                         if isinstance(v, tuple) else v.__name__)
def test_cli_defaults_are_the_options_defaults(path, options_class):
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    fields = options_class.model_fields
    named = [param for param in command.params if param.name in fields]
    assert len(named) >= min(len(fields), 5)
    for param in named:
        field = fields[param.name]
        if field.is_required():
            continue
        # the CLI writes lists comma-separated (or leaves a repeatable flag empty)
        cli_default = param.default
        if isinstance(field.default, list) and isinstance(cli_default, str):
            cli_default = options_class.model_validate({param.name: cli_default}
                                                       | _required(options_class)).__dict__[param.name]
        assert cli_default == field.default or (cli_default is None and field.default in ([], None)), param.name


def _required(options_class) -> dict:
    return {name: "x" for name, field in options_class.model_fields.items() if field.is_required()}


def test_an_eval_command_builds_its_options_object(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(bon, "run_bon_eval", lambda options: seen.append(options) or {"accuracy": {}})
    result = CliRunner().invoke(app, ["eval", "bon", "--model", "tiny-random", "--n", "4,1,2", "--select",
                                      "majority, laser", "--reserved-token", "<z>", "--top-p", "0.9",
                                      "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert seen == [BonOptions(model="tiny-random", ns=[1, 2, 4], selectors=["majority", "laser"], token="<z>",
                               top_p=0.9, out_dir=tmp_path)]
    assert seen[0].sampling(4).top_p == 0.9 and seen[0].sampling(4).n == 4
    refused = CliRunner().invoke(app, ["eval", "bon", "--n", "1,x"])
    assert isinstance(refused.exception, ConfigError) and refused.exception.where == "--n"
    assert "'1,x' is not a list of integers" in str(refused.exception)


def test_options_are_validated_and_frozen():
    options = MasterkeyOptions(probes="pairwise", n=3)
    assert options.probes == ["pairwise"] and options.top_p == 1.0
    with pytest.raises(ValidationError):
        options.n = 4
    assert options.model_copy(update={"n": 4}).n == 4
    assert GapOptions(similarity="none").similarity is None
    with pytest.raises(ValidationError, match="nn"):
        GapOptions(nn=3)
    with pytest.raises(ConfigError, match="unknown option 'nn'") as caught:
        GapOptions.parse({"nn": 3}, where=lambda key: f"args.{key}")
    assert caught.value.where == "args.nn" and "judge_max_new_tokens" in caught.value.fix
    with pytest.raises(ConfigError, match="option 'judge' is required"):
        SynthesisOptions.parse({"pairs": "task:arithmetic"})


def test_python_callers_pass_the_options_object(tmp_path):
    math = run_math_eval(MathOptions(model="tiny-random", n=2, max_new_tokens=4, out_dir=tmp_path / "math"))
    assert math["num_prompts"] == 2 and (tmp_path / "math" / "math.json").is_file()
    judged = run_judge_eval(JudgeEvalOptions(model="tiny-random", n=2, max_new_tokens=4, out_dir=tmp_path / "judge"))
    assert judged["pairs"] == 2 and json.loads((tmp_path / "judge" / "judge.json").read_text()) == judged


@pytest.mark.parametrize(("args", "key", "match"), [
    ({"nn": 3}, "nn", "unknown option 'nn'"),
    ({"n": "many"}, "n", "n: "),
    ({"out_dir": "elsewhere"}, "out_dir", "sets out_dir"),
])
def test_a_tool_stage_with_a_bad_arg_is_refused_before_any_stage_runs(tmp_path, args, key, match):
    path = write_pipeline(tmp_path, sharpness=[], figures=[])
    pipeline = yaml.safe_load(path.read_text())
    pipeline["stages"].append({"name": "gap", "kind": "gap_eval", "from": "first", "args": args})
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    with pytest.raises(ConfigError, match=match) as caught:
        run_pipeline(path)
    assert caught.value.where.endswith(f"stages.gap.args.{key}")
    assert not (tmp_path / "runs" / "first").exists()  # refused before the first (train) stage ran


def test_a_tool_stage_without_a_model_is_refused_at_load(tmp_path):
    path = write_pipeline(tmp_path, sharpness=[], figures=[],
                          stages=[{"name": "judged", "kind": "judge_eval", "args": {"n": 2}}])
    with pytest.raises(ConfigError, match="has no model"):
        load_pipeline(path)
