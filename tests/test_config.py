"""Recipes, overrides and their errors."""

from pathlib import Path

import pytest

from posttrain.config import apply_overrides, dump_config, load_config
from posttrain.errors import ConfigError

RECIPES = Path(__file__).resolve().parents[1] / "posttrain" / "recipes"


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(recipe):
    config = load_config(recipe)
    assert config.name


def test_overrides_are_parsed_as_yaml_and_nested():
    config = load_config(RECIPES / "quickstart.yaml", ["train.max_steps=3", "sft.loss=nll", "optim.lr=2e-4",
                                                       "data.train={task: arithmetic, n: 10}"])
    assert config.train.max_steps == 3 and config.sft.loss == "nll" and config.optim.lr == 2e-4
    assert config.data.train.n == 10


def test_unknown_key_is_an_error_that_names_it(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(recipe)
    assert "train.max_stepz" in str(info.value) and "unknown key" in str(info.value)
    assert str(recipe) in str(info.value)


def test_bad_value_names_field_and_value():
    with pytest.raises(ConfigError, match=r"sft\.loss.*'mystery'"):
        load_config(None, ["sft.loss=mystery"])


def test_invalid_yaml_names_the_line(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: x\ntrain: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d"):
        load_config(recipe)


def test_override_without_equals_and_missing_recipe(tmp_path):
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["train.max_steps"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_override_cannot_descend_into_a_value():
    with pytest.raises(ConfigError, match="is a value"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_data_source_needs_exactly_one_of_path_or_task():
    with pytest.raises(ConfigError, match="exactly one"):
        load_config(None, ["data.train={path: a.jsonl, task: arithmetic}"])


def test_dumped_config_round_trips(tmp_path):
    config = load_config(RECIPES / "quickstart.yaml", ["seed=7"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config
