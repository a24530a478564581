"""Redraw a pipeline's seed tables and figures from evaluation summaries kept in two places: a results folder as
docs/results holds them (``<stage>.json``) and a run directory (``<stage>/<summary>.json``), e.g. when some arms of
a pipeline ran in a later session than the others. A stage's summary in the run directory wins over the saved one.

Only evaluation (tool) stages are merged: the figures and tables of these pipelines read nothing else.

    python docs/scripts/merge_stage_results.py posttrain/recipes/judge_testbed/master_rm.yaml \\
        --results docs/results/judge_testbed_master_rm --run runs/judge-testbed-master-rm \\
        --out docs/results/judge_testbed_master_rm

writes ``<table>.md``/``<table>.json`` for each table, ``<figure>.png`` for each figure whose stages all have a
summary, and ``<stage>.json`` for every evaluation stage found, into ``--out``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from posttrain.report.stages import draw_figure, seed_table, stage_ran
from posttrain.trainers.pipeline import TOOL_STAGES, load_pipeline


def merge(pipeline_path: Path, results: Path, run: Path, out: Path) -> list[str]:
    """Lay the summaries out as one pipeline root, draw its tables and figures into ``out``; the stages found."""
    pipeline = load_pipeline(pipeline_path)
    names = [stage.name for stage in pipeline.stages]
    found: dict[str, Path] = {}
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for stage in pipeline.stages:
            if stage.kind not in TOOL_STAGES:
                continue
            summary = TOOL_STAGES[stage.kind].done_file
            source = next((path for path in (run / stage.name / summary, results / f"{stage.name}.json")
                           if path.is_file()), None)
            if source is None:
                continue
            (root / stage.name).mkdir()
            found[stage.name] = Path(shutil.copyfile(source, root / stage.name / summary))
        for table in pipeline.tables:
            print(f"{table.name}\n{seed_table(root, table.name, table.rows, table.metrics, names)}\n")
            for suffix in (".md", ".json"):
                shutil.copyfile(root / f"{table.name}{suffix}", out / f"{table.name}{suffix}")
        for figure in pipeline.figures:
            if all(stage_ran(root / stage) for stage in figure.stages):
                shutil.copyfile(draw_figure(root, figure.name, figure.stages, figure.metrics),
                                out / f"{figure.name}.png")
        for name, summary in found.items():
            shutil.copyfile(summary, out / f"{name}.json")
    return list(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", type=Path, help="the pipeline's YAML")
    parser.add_argument("--results", type=Path, required=True, help="folder of saved <stage>.json summaries")
    parser.add_argument("--run", type=Path, required=True, help="the pipeline's output_dir with newer stages")
    parser.add_argument("--out", type=Path, required=True, help="where the tables, figures and summaries go")
    args = parser.parse_args()
    print("stages:", ", ".join(merge(args.pipeline, args.results, args.run, args.out)))


if __name__ == "__main__":
    main()
