"""Test-wide settings: never touch the network; keep tokenizers single-threaded."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def registered():
    """Register test rewards under fresh names (``add(name, fn, **options) -> name``) and remove them afterwards."""
    from posttrain.rewards import REWARDS, register_reward

    added = []

    def add(name: str, fn, **options):
        register_reward(name, **options)(fn)
        added.append(name)
        return name

    yield add
    for name in added:
        REWARDS.pop(name, None)
