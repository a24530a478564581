"""Where a run's records come from (``data:``): a file, folder or hub name, or a synthetic task, for training
and optional held-out evaluation, with the sequence length and how over-long, invalid or packed records are handled.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from posttrain.config.sections import Section


class DataSource(Section):
    """Where records come from: a file/directory/hub name (``path``) or a synthetic ``task``."""

    path: str | None = None
    split: str = Field("train", description="the dataset split; for a task, train or held_out (questions never "
                       "in the train split)")
    task: str | None = None
    n: int = Field(1000, gt=0)
    seed: int = 0
    levels: list[int] | None = None
    limit: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        if (self.path is None) == (self.task is None):
            raise ValueError(
                "give exactly one of `path` (a data file or directory) or `task` (a synthetic task name)"
            )
        if self.task is not None and self.split not in ("train", "held_out"):
            raise ValueError(f"a task has the splits train and held_out, not {self.split!r}")
        return self


class DataConfig(Section):
    train: DataSource = DataSource(task="arithmetic", n=2000, seed=0)
    eval: DataSource | None = None
    max_length: int = Field(512, gt=1)
    overlong: Literal["truncate", "drop"] = "truncate"
    completion_only: bool = True
    packing: bool = False
    skip_invalid: bool = False
    sample_block: int = Field(1, gt=0, description="sft: consecutive training records drawn together, shuffled as "
                              "one block (2 keeps the two A/B orders of a judge pair in the same batch); the number "
                              "of records and the batch size must be multiples of it")
    masterkey_negatives: float = Field(0.0, ge=0, le=10, description="Master-RM augmentation of data.train's "
                                       "preference pairs: add this fraction of pairs whose rejected response is a "
                                       "master key or the chosen one cut to its first sentence "
                                       "(posttrain.data.master_keys); never applied to held-out data")
