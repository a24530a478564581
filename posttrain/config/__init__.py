"""Run configuration: pydantic models, YAML recipes and ``key.sub=value`` overrides.

A recipe is a YAML file whose keys mirror :class:`RunConfig`; each section is a model in the module of its part of
the run (:mod:`~posttrain.config.sections` the base, :mod:`~posttrain.config.model`, :mod:`~posttrain.config.data`,
:mod:`~posttrain.config.training`, :mod:`~posttrain.config.rewards`, :mod:`~posttrain.config.rollout`,
:mod:`~posttrain.config.rl`, :mod:`~posttrain.config.distill`, :mod:`~posttrain.config.preference`),
:mod:`~posttrain.config.run` the whole run and its checks across sections, and :mod:`~posttrain.config.loading`
how a recipe and its overrides become a validated :class:`RunConfig` (and how paths in them resolve). Every
name is imported from here: ``from posttrain.config import RunConfig, load_config``.
"""

from posttrain.config.data import DataConfig, DataSource
from posttrain.config.distill import DistillConfig
from posttrain.config.feedback import FeedbackConfig
from posttrain.config.loading import (
    apply_overrides,
    dump_config,
    load_config,
    parse_override,
    validate_config,
)
from posttrain.config.model import LoraConfig, ModelConfig
from posttrain.config.preference import (
    PREFERENCE_LABEL_SMOOTHING,
    PREFERENCE_REFERENCE_FREE,
    PreferenceConfig,
    RewardModelConfig,
)
from posttrain.config.rewards import PATH_FORM, RewardsConfig, RewardSpec, split_reward_path
from posttrain.config.rl import RL_PRESETS, JudgeTaskConfig, LaserConfig, PPOConfig, RLConfig
from posttrain.config.rollout import RolloutConfig
from posttrain.config.run import (
    DEFAULT_SAMPLES_PER_PROMPT,
    METHOD_SECTIONS,
    MOVED_KEYS,
    ON_POLICY_METHODS,
    PPO_RL_DEFAULTS,
    PPO_UNUSED_RL_KEYS,
    RUN_NAME,
    RunConfig,
    unused_sections,
)
from posttrain.config.sections import Section, changed_keys
from posttrain.config.training import (
    LEAN_MICRO_BATCH_TOKENS,
    LEAN_ROLLOUT_ENGINE,
    LEAN_SETTINGS,
    TRACKERS,
    DistConfig,
    EvalConfig,
    LoggingConfig,
    OptimConfig,
    SFTConfig,
    Tracker,
    TrainConfig,
)

__all__ = [
    "DEFAULT_SAMPLES_PER_PROMPT",
    "LEAN_MICRO_BATCH_TOKENS",
    "LEAN_ROLLOUT_ENGINE",
    "LEAN_SETTINGS",
    "METHOD_SECTIONS",
    "MOVED_KEYS",
    "ON_POLICY_METHODS",
    "PATH_FORM",
    "PPO_RL_DEFAULTS",
    "PPO_UNUSED_RL_KEYS",
    "PREFERENCE_LABEL_SMOOTHING",
    "PREFERENCE_REFERENCE_FREE",
    "RL_PRESETS",
    "RUN_NAME",
    "TRACKERS",
    "DataConfig",
    "DataSource",
    "DistConfig",
    "DistillConfig",
    "FeedbackConfig",
    "EvalConfig",
    "JudgeTaskConfig",
    "LaserConfig",
    "LoggingConfig",
    "LoraConfig",
    "ModelConfig",
    "OptimConfig",
    "PPOConfig",
    "PreferenceConfig",
    "RLConfig",
    "RewardModelConfig",
    "RewardSpec",
    "RewardsConfig",
    "RolloutConfig",
    "RunConfig",
    "SFTConfig",
    "Section",
    "TrainConfig",
    "Tracker",
    "apply_overrides",
    "changed_keys",
    "dump_config",
    "load_config",
    "parse_override",
    "split_reward_path",
    "unused_sections",
    "validate_config",
]
