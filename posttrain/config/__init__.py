"""Run configuration (being split into modules by section; everything is in :mod:`posttrain.config.run`)."""

from posttrain.config.run import (
    DEFAULT_SAMPLES_PER_PROMPT, LEAN_MICRO_BATCH_TOKENS, LEAN_ROLLOUT_ENGINE, LEAN_SETTINGS, METHOD_SECTIONS, MOVED_KEYS,
    ON_POLICY_METHODS, PATH_FORM, PPO_RL_DEFAULTS, PPO_UNUSED_RL_KEYS, PREFERENCE_LABEL_SMOOTHING,
    PREFERENCE_REFERENCE_FREE, RL_PRESETS, RUN_NAME, TRACKERS, DataConfig, DataSource, DistConfig, DistillConfig,
    EvalConfig, JudgeTaskConfig, LaserConfig, LoggingConfig, LoraConfig, ModelConfig, OptimConfig, PPOConfig,
    PreferenceConfig, RewardModelConfig, RewardsConfig, RewardSpec, RLConfig, RolloutConfig, RunConfig, Section,
    SFTConfig, Tracker, TrainConfig, apply_overrides, changed_keys, dump_config, load_config, parse_override,
    split_reward_path, validate_config,
)
