"""``posttrain pipeline``: a chain of runs in which a stage starts from another stage's final weights.

A pipeline file names its stages in order; each is a recipe plus overrides, optionally starting ``from`` an
earlier stage (its ``model.name`` becomes that stage's latest checkpoint). After the stages it runs the
listed sharpness comparisons (:mod:`posttrain.evals.sharpness`), draws the listed figures (metrics of
several stages side by side) and writes the listed tables over seeds (each arm's mean ± sd,
:func:`posttrain.report.stages.seed_table`). Every run lives under the pipeline's ``output_dir``; running the pipeline again
resumes unfinished stages (``train.resume: auto``) and leaves finished ones as they are.

Paths follow :mod:`posttrain.recipe_paths`: ``recipe``, the values of ``set`` and ``overrides``, the
name-or-path arguments of tool stages (:data:`TOOL_PATH_ARGS`) and a sharpness ``data`` file are relative to
the pipeline file's folder; ``output_dir`` is relative to the working directory. ``${output_dir}`` anywhere
stands for the pipeline's ``output_dir`` (a stage reads what an earlier one wrote as
``${output_dir}/<stage>/<file>``), and ``final:<stage>`` for that stage's final weights.

```yaml
name: ts-opsd
output_dir: runs/ts-opsd
overrides: {seed: 0}                      # applied to every stage
stages:
  - {name: collapse, recipe: collapse.yaml}
  - {name: reheat, recipe: reheat.yaml, from: collapse, set: {distill.teacher_temperature: 1.5}}
sharpness:
  - {model: reheat, reference: collapse, data: "{task: arithmetic, ...}"}
figures:
  - {name: continued, stages: [reheat], metrics: [entropy, eval/pass@1]}
tables:
  - {name: seeds, rows: {reheat: ["reheat*"]}, metrics: [eval/pass@1]}
```
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import Field, model_validator

from posttrain.config import RunConfig, Section, dump_config, load_config
from posttrain.errors import ConfigError
from posttrain.evals.gap import GapOptions, run_gap_eval
from posttrain.evals.judge import JudgeEvalOptions, run_judge_eval
from posttrain.evals.masterkey import MasterkeyOptions, run_masterkey_eval
from posttrain.evals.rejection import RejectionOptions, run_rejection_sampling
from posttrain.evals.sharpness import SharpnessOptions, run_sharpness_eval
from posttrain.judges.labeling import LabelOptions, run_labeling
from posttrain.judges.metarm_data import MetarmDataOptions, run_metarm_data
from posttrain.judges.self_rewarding import SelfJudgeOptions, run_self_judge
from posttrain.judges.synthesis import SynthesisOptions, run_synthesis
from posttrain.models import export_checkpoint
from posttrain.recipe_paths import resolve_name_or_path, substitute_output_dir
from posttrain.report import RunData, write_report
from posttrain.report.chain import chain_table
from posttrain.report.runs import read_run
from posttrain.report.stages import draw_figure, matching_stages, seed_table, stage_ran
from posttrain.rollout.options import ToolOptions
from posttrain.trainers import checkpoint as ckpt
from posttrain.trainers import resume
from posttrain.trainers.run import train


class ToolStage(NamedTuple):
    """A tool stage kind: its function, the options object its ``args`` build, the option naming the model
    (set by ``from``), the file that marks the stage done."""

    function: Callable[[Any], dict]
    options: type[ToolOptions]
    model_key: str
    done_file: str


TOOL_STAGES = {
    "synthesize": ToolStage(run_synthesis, SynthesisOptions, "judge", "summary.json"),
    "judge_eval": ToolStage(run_judge_eval, JudgeEvalOptions, "model", "judge.json"),
    "gap_eval": ToolStage(run_gap_eval, GapOptions, "model", "gap.json"),
    "metarm_data": ToolStage(run_metarm_data, MetarmDataOptions, "judge", "summary.json"),
    "label": ToolStage(run_labeling, LabelOptions, "judge", "summary.json"),
    "masterkey": ToolStage(run_masterkey_eval, MasterkeyOptions, "model", "masterkey.json"),
    "rejection_sample": ToolStage(run_rejection_sampling, RejectionOptions, "model", "summary.json"),
    "self_judge": ToolStage(run_self_judge, SelfJudgeOptions, "model", "summary.json"),
}
STAGE_KINDS = ("train", *TOOL_STAGES)
# the tool arguments that name a model, a template or a data file: resolved against the pipeline's folder
TOOL_PATH_ARGS = ("model", "judge", "pairs", "data", "template", "previous")


class Stage(Section):
    """``train`` runs a recipe; the tool stages run with ``args``, their model being the ``from`` stage's final
    weights (or the model argument in ``args``), writing into ``output_dir/<name>``: ``synthesize``
    (:func:`posttrain.judges.synthesis.run_synthesis`), ``judge_eval`` (:func:`posttrain.evals.judge.run_judge_eval`),
    ``gap_eval`` (:func:`posttrain.evals.gap.run_gap_eval`), ``metarm_data``
    (:func:`posttrain.judges.metarm_data.run_metarm_data`), ``label``
    (:func:`posttrain.judges.labeling.run_labeling`), ``masterkey``
    (:func:`posttrain.evals.masterkey.run_masterkey_eval`), ``rejection_sample``
    (:func:`posttrain.evals.rejection.run_rejection_sampling`) and ``self_judge``
    (:func:`posttrain.judges.self_rewarding.run_self_judge`). Their ``args`` are the fields of the tool's options
    object but ``out_dir`` (:func:`check_tool_args`, before any stage runs)."""

    name: str
    kind: str = "train"
    recipe: str | None = Field(None, description="train: recipe path, relative to the pipeline file")
    from_: str | None = Field(None, alias="from", description="start from this earlier stage's final weights")
    set: dict[str, Any] = Field(default_factory=dict, description="train: key.sub: value overrides")
    args: dict[str, Any] = Field(default_factory=dict, description="tool stages: fields of the tool's options")

    @model_validator(mode="after")
    def _kind(self) -> Stage:
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"stage {self.name!r} has unknown kind {self.kind!r} (use one of {', '.join(STAGE_KINDS)})")
        if (self.kind == "train") != (self.recipe is not None):
            raise ValueError(f"stage {self.name!r}: a train stage needs a recipe, other kinds take args instead")
        return self


class SharpnessSpec(Section):
    model: str = Field(description="stage whose final weights are compared")
    reference: str = Field(description="stage whose final weights are the reference")
    data: str = Field(description="prompts: a file or a task as in a recipe's data.train")
    n: int = Field(32, gt=0)
    k: int = Field(4, gt=0)
    max_new_tokens: int = Field(96, gt=0)


class FigureSpec(Section):
    name: str
    stages: list[str]
    metrics: list[str]


class TableSpec(Section):
    """A table over seeds (:func:`posttrain.report.stages.seed_table`): ``rows`` maps an arm's label to its stages
    (names or shell-style patterns, e.g. ``eval-dpo-s*``), ``metrics`` are stage values
    (:func:`posttrain.report.stages.stage_value`)."""

    name: str
    rows: dict[str, list[str]] = Field(min_length=1)
    metrics: list[str] = Field(min_length=1)


class PipelineConfig(Section):
    name: str = "pipeline"
    output_dir: str = "runs"
    overrides: dict[str, Any] = Field(default_factory=dict)
    stages: list[Stage] = Field(min_length=1)
    sharpness: list[SharpnessSpec] = Field(default_factory=list)
    figures: list[FigureSpec] = Field(default_factory=list)
    tables: list[TableSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> PipelineConfig:
        seen: list[str] = []
        trained = {stage.name for stage in self.stages if stage.kind == "train"}
        for stage in self.stages:
            if stage.name in seen:
                raise ValueError(f"stage name {stage.name!r} is used twice")
            if stage.from_ is not None and (stage.from_ not in seen or stage.from_ not in trained):
                raise ValueError(f"stage {stage.name!r} starts from {stage.from_!r}, which is not an earlier "
                                 "train stage")
            seen.append(stage.name)
        for used in [*(s.model for s in self.sharpness), *(s.reference for s in self.sharpness),
                     *(name for f in self.figures for name in f.stages)]:
            if used not in seen:
                raise ValueError(f"{used!r} is not a stage of the pipeline (stages: {', '.join(seen)})")
        for table in self.tables:
            for label, patterns in table.rows.items():
                for pattern in patterns:
                    if not matching_stages([pattern], seen):
                        raise ValueError(f"table {table.name!r}, row {label!r}: {pattern!r} matches no stage "
                                         f"(stages: {', '.join(seen)})")
        return self


def load_pipeline(path: Path) -> PipelineConfig:
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    try:
        pipeline = PipelineConfig.model_validate(raw)
    except ValueError as error:
        raise ConfigError(f"{path}: {error}", where=str(path), fix="see posttrain/trainers/pipeline.py for the "
                          "pipeline file's fields") from None
    for stage in pipeline.stages:
        check_tool_args(stage, f"{path}: stages.{stage.name}")
    return pipeline


def check_tool_args(stage: Stage, where: str) -> None:
    """A tool stage's ``args`` validated against its options object (its model may come from ``from``); an unknown
    or malformed key, ``out_dir`` (the pipeline sets it) or a missing model is a :class:`ConfigError` naming the
    stage and the key."""
    if stage.kind not in TOOL_STAGES:
        return
    tool = TOOL_STAGES[stage.kind]
    if "out_dir" in stage.args:
        raise ConfigError(f"stage {stage.name!r} sets out_dir", where=f"{where}.args.out_dir",
                          fix=f"drop it: the stage writes into <output_dir>/{stage.name}")
    if stage.from_ is None and tool.model_key not in stage.args:
        raise ConfigError(f"stage {stage.name!r} has no model", where=where,
                          fix=f"give it `from: <train stage>` or args.{tool.model_key}")
    values = {**stage.args, tool.model_key: stage.args.get(tool.model_key, FINAL_PREFIX + str(stage.from_))}
    tool.options.parse(values, where=lambda key: f"{where}.args.{key}")


def final_weights(run_dir: Path) -> Path:
    """The model directory of a run's latest checkpoint, as an absolute path. A sharded (FSDP) checkpoint is
    exported once, beside the checkpoints (``checkpoints/step-N-model``), and that directory is returned."""
    found = ckpt.list_checkpoints(run_dir)
    if not found:
        raise ConfigError(f"{run_dir} has no checkpoint to start from", where=str(run_dir),
                          fix="let the earlier stage finish (train.save_final must stay on)")
    latest = found[-1]
    if not (latest / ckpt.SHARDED).is_dir():
        return (latest / "model").resolve()
    exported = latest.with_name(f"{latest.name}-model")
    if not (exported / "config.json").is_file():
        export_checkpoint(latest, exported)
    return exported.resolve()


FINAL_PREFIX = "final:"


def resolve_finals(value: Any, root: Path) -> Any:
    """``"final:<stage>"`` anywhere in ``value`` (nested dicts and lists too) becomes that stage's final
    weights, e.g. a MetaRM trained in an earlier stage as a reward's ``model``."""
    if isinstance(value, str) and value.startswith(FINAL_PREFIX):
        return str(final_weights(root / value[len(FINAL_PREFIX):]))
    if isinstance(value, dict):
        return {key: resolve_finals(item, root) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve_finals(item, root) for item in value]
    return value


def stage_overrides(pipeline: PipelineConfig, stage: Stage) -> list[str]:
    """The overrides a train stage's recipe is loaded with: the pipeline's, the stage's ``set``, its run name and
    output_dir, and with ``from`` the model's final weights (paths in them are relative to the pipeline file)."""
    values = {**pipeline.overrides, **resolve_finals(stage.set, Path(pipeline.output_dir)), "name": stage.name,
              "output_dir": pipeline.output_dir}
    if stage.from_ is not None:
        values["model.name"] = str(final_weights(Path(pipeline.output_dir) / stage.from_))
    return [f"{key}={json.dumps(value) if not isinstance(value, str) else value}" for key, value in values.items()]


def run_pipeline(path: Path, only: list[str] | None = None) -> Path:
    """Run the stages (or ``only`` those :func:`selected_stages` names), then the sharpness comparisons and figures,
    then print what the chain achieved (:func:`write_summary`, which also writes the side-by-side ``report.html``);
    returns output_dir."""
    pipeline = load_pipeline(path)
    root, folder = Path(pipeline.output_dir), Path(path).parent
    only = selected_stages(pipeline, only) if only else None
    for stage in pipeline.stages:
        if only and stage.name not in only:
            continue
        print(f"=== stage {stage.name}", flush=True)
        if stage.kind == "train":
            config = load_config(folder / stage.recipe, stage_overrides(pipeline, stage), overrides_dir=folder)
            if finished_without_checkpoint(config.run_dir):
                print(f"stage {stage.name} finished and kept no checkpoint to resume from; left as it is "
                      f"(delete {config.run_dir} to run it again)", flush=True)
                continue
            if finished_as_configured(config):
                print(f"stage {stage.name} finished with these settings; nothing to do", flush=True)
                continue
            train(config)
        else:
            run_tool_stage(root, stage, folder)
    for spec in pipeline.sharpness:
        if _ready(root, [spec.model, spec.reference], f"sharpness {spec.model} vs {spec.reference}", only):
            run_sharpness(root, spec, folder)
    for figure in pipeline.figures:
        if _ready(root, figure.stages, f"figure {figure.name}", only):
            draw_figure(root, figure.name, figure.stages, figure.metrics)
    names = [stage.name for stage in pipeline.stages]
    for table in pipeline.tables:  # over the stages that have run so far (n says how many)
        print(f"\n{table.name} (mean ± sd over seeds; {root / table.name}.md)\n"
              f"{seed_table(root, table.name, table.rows, table.metrics, names)}", flush=True)
    summary = write_summary(root, pipeline)
    if summary:
        print(f"\n{summary}", flush=True)
    return root


def trained_runs(root: Path, pipeline: PipelineConfig) -> list[RunData]:
    """The train stages that have run, in the pipeline's order."""
    return [read_run(root / stage.name, stage.name) for stage in pipeline.stages
            if stage.kind == "train" and (root / stage.name / "metrics.jsonl").is_file()]


def write_summary(root: Path, pipeline: PipelineConfig) -> str:
    """Write ``root/report.html`` (every train stage that has run, side by side) and return what the pipeline
    achieved: the before/after table of the held-out evaluation (:func:`posttrain.report.chain.chain_table`)
    and the report's path."""
    runs = trained_runs(root, pipeline)
    if not runs:
        return ""
    report = write_report([run.path for run in runs], root / "report.html")
    table = chain_table(runs)
    return f"{table}\n\nreport: {report}" if table else f"report: {report}"


def selected_stages(pipeline: PipelineConfig, patterns: list[str]) -> list[str]:
    """The stages ``--only`` names: each pattern a stage name or a shell-style pattern (``dpo-s*``), several
    separated by commas; a pattern that names no stage is a :class:`ConfigError` (a typo must not run nothing)."""
    names = [stage.name for stage in pipeline.stages]
    chosen: set[str] = set()
    for pattern in (part.strip() for item in patterns for part in item.split(",") if part.strip()):
        matched = fnmatch.filter(names, pattern)
        if not matched:
            raise ConfigError(f"--only {pattern!r} names no stage of pipeline {pipeline.name!r}", where="--only",
                              fix=f"use stage names or patterns (e.g. 'eval-*'); the stages: {', '.join(names)}")
        chosen.update(matched)
    return [name for name in names if name in chosen]


def finished_without_checkpoint(run_dir: Path) -> bool:
    """A run that reached its end and saved nothing (``train.save_final: false``): training it again would start
    from scratch and replace its results, so a pipeline run again leaves it as it is. A finished run with a
    checkpoint is resumed as usual (nothing to do at its last step; a longer ``max_steps`` continues it)."""
    return resume.finished(run_dir) and not ckpt.list_checkpoints(run_dir)


def finished_as_configured(config: RunConfig) -> bool:
    """A run that reached its end with exactly these settings (its ``config.yaml`` is this config's dump): training
    it would load the model only to find nothing left to do, so a pipeline run again skips it at once. Other settings
    (a longer ``train.max_steps``, an edited recipe) go through :func:`train`, which continues the run or refuses."""
    saved = config.run_dir / "config.yaml"
    return (resume.finished(config.run_dir) and saved.is_file()
            and saved.read_text(encoding="utf-8") == dump_config(config))


def _ready(root: Path, stages: list[str], what: str, only: list[str] | None) -> bool:
    """With ``--only``, a comparison or figure over stages that have not run yet is skipped (said, not an
    error); a full run has run them all, so there it always proceeds (and a missing stage is an error)."""
    missing = [stage for stage in stages if not stage_ran(root / stage)]
    if only and missing:
        print(f"skipped {what}: stage(s) {', '.join(missing)} have not run yet", flush=True)
        return False
    return True


def tool_arguments(args: dict[str, Any], root: Path, folder: Path) -> dict[str, Any]:
    """A tool stage's ``args`` as the tool gets them: ``final:<stage>`` and ``${output_dir}`` (the pipeline's
    ``root``) replaced, and the :data:`TOOL_PATH_ARGS` that are paths made absolute against ``folder``."""
    args = substitute_output_dir(resolve_finals(dict(args), root), str(root))
    return {key: resolve_name_or_path(value, folder) if key in TOOL_PATH_ARGS and isinstance(value, str) else value
            for key, value in args.items()}


def run_tool_stage(root: Path, stage: Stage, folder: Path) -> None:
    """A tool stage (see :data:`TOOL_STAGES`) of the pipeline in ``folder``; skipped when its output exists."""
    tool = TOOL_STAGES[stage.kind]
    out_dir = root / stage.name
    if (out_dir / tool.done_file).is_file():
        return
    check_tool_args(stage, f"stages.{stage.name}")
    args = tool_arguments(stage.args, root, folder)
    if stage.from_ is not None:
        args[tool.model_key] = str(final_weights(root / stage.from_))
    tool.function(tool.options.parse({**args, "out_dir": out_dir}, where=lambda key: f"stages.{stage.name}.args.{key}"))


def run_sharpness(root: Path, spec: SharpnessSpec, folder: Path) -> dict:
    """The sharpness comparison ``spec`` of the pipeline in ``folder`` (its ``data`` relative to that folder)."""
    out_dir = root / "sharpness" / f"{spec.model}-vs-{spec.reference}"
    if (out_dir / "sharpness.json").is_file():
        return json.loads((out_dir / "sharpness.json").read_text())
    print(f"=== sharpness {spec.model} vs {spec.reference}", flush=True)
    return run_sharpness_eval(SharpnessOptions(
        model=str(final_weights(root / spec.model)), reference=str(final_weights(root / spec.reference)),
        data=tool_arguments({"data": spec.data}, root, folder)["data"], n=spec.n, k=spec.k,
        max_new_tokens=spec.max_new_tokens, out_dir=out_dir))
