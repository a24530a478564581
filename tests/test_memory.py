"""The opt-in glibc mmap threshold (posttrain.trainers.memory)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from posttrain.trainers.memory import release_freed_tensors


def test_threshold_is_off_unless_asked_for(monkeypatch):
    # with the variable unset or 0, nothing is changed (so this is safe inside the test process)
    monkeypatch.delenv("POSTTRAIN_MMAP_THRESHOLD", raising=False)
    assert release_freed_tensors() is False
    monkeypatch.setenv("POSTTRAIN_MMAP_THRESHOLD", "0")
    assert release_freed_tensors() is False
    assert release_freed_tensors(default=1 << 20) is False  # the variable set to 0 wins over a default (FSDP's)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_threshold_is_applied_on_glibc():
    # in a child process: the setting lasts for the life of a process and would slow the other tests
    code = ("from posttrain.trainers.memory import release_freed_tensors as r; "
            "print(r(1 << 20), r(1 << 16), r(default=1 << 20))")
    env = {key: value for key, value in os.environ.items() if key != "POSTTRAIN_MMAP_THRESHOLD"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["True", "True", "True"]
