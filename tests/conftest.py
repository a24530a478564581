"""Test-wide settings: never touch the network; one thread per test process.

The models here are tiny, so torch's threads (one per core by default) mostly wait on each other; ``make test``
runs one process per core instead (pytest-xdist), and two processes of two threads on two cores would contend.
``OMP_NUM_THREADS`` is set before torch is imported and is inherited by the command lines the tests start; a
value you set yourself is kept.
"""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
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
