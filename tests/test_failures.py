"""Failures that used to look like success (issue #14): a reward that calls ``sys.exit`` or hangs, a math
evaluation whose references are not math, and ``data make --n 0``."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import pytest
from pydantic import ValidationError

from posttrain.data import make_task_file
from posttrain.errors import ConfigError, DataError
from posttrain.evals import evaluate_math
from posttrain.grading import answers_match, is_math_answer
from posttrain.rewards import REWARDS, RewardError, RewardsConfig, RewardSpec, build_rewards, register_reward
from posttrain.rewards.timeout import INTERRUPT_SIGNAL, call_with_timeout
from posttrain.rollout import SamplingParams
from posttrain.trainers.checkpoint import list_checkpoints
from posttrain.trainers.run import train
from tests.helpers import train_steps
from tests.rl_helpers import G, rl_config
from tests.test_math_eval import ScriptedEngine

TIMEOUT = 0.3


@pytest.fixture
def registered():
    """Register test rewards under fresh names and remove them afterwards."""
    added = []

    def add(name: str, fn):
        register_reward(name)(fn)
        added.append(name)
        return {"name": name}

    yield add
    for name in added:
        REWARDS.pop(name, None)


def score(*functions: dict, completions=("a", "b"), **settings):
    config = RewardsConfig(functions=[RewardSpec(**spec) for spec in functions], max_error_rate=1.0, **settings)
    return build_rewards(config).score(["p"] * len(completions), list(completions), [{}] * len(completions))


def sleeps(prompt, completion, record):
    time.sleep(100)


def spins(prompt, completion, record):
    while True:
        pass


def ok(prompt, completion, record):
    return 1.0


# ---------------------------------------------------------------------------- exits inside a reward


class Interrupted(KeyboardInterrupt):
    """A KeyboardInterrupt subclass: never what Ctrl-C raises."""


@pytest.mark.parametrize("raised", [SystemExit(0), SystemExit("bye"), GeneratorExit(), Interrupted()])
def test_a_reward_raising_a_base_exception_is_a_counted_error_not_the_end(registered, raised):
    def fails(prompt, completion, record):
        raise raised

    batch = score(registered("fails_base", fails), registered("fine", ok))
    assert batch.errors == {"fails_base": 2, "fine": 0}
    assert batch.components["fine"] == [1.0, 1.0] and batch.error_rate == 1.0
    assert type(raised).__name__ in batch.error_examples["fails_base"]


def test_sys_exit_names_the_call_and_respects_max_error_rate(registered):
    def exits(prompt, completion, record):
        sys.exit(3)

    config = RewardsConfig(functions=[registered("exits", exits)], max_error_rate=0.5)
    with pytest.raises(RewardError, match=r"SystemExit: sys\.exit\(3\) was called"):
        build_rewards(config).score(["p"], ["a"], [{}])


def test_ctrl_c_still_stops_scoring(registered):
    def interrupted(prompt, completion, record):
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C: the default handler raises KeyboardInterrupt
        time.sleep(5)

    # Python's own handler, as in a terminal: a shell starting the tests in the background without job control
    # hands them SIGINT ignored, and Python then keeps it ignored
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            score(registered("ctrl_c", interrupted))
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_run_whose_rewards_exit_hang_and_sleep_still_trains_logs_and_saves(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import sys, time\n\n\ndef exits(prompt, completion, record):\n    sys.exit(0)\n\n\n"
                   "def sleeps(prompt, completion, record):\n    time.sleep(100)\n\n\n"
                   "def spins(prompt, completion, record):\n    while True:\n        pass\n")
    functions = ", ".join(f"{{path: {bad}:{name}}}" for name in ("exits", "sleeps", "spins"))
    rewards = f"rl.rewards={{functions: [{functions}, {{path: {tmp_path / 'r.py'}:lower}}], " \
              "max_error_rate: 1, timeout: 0.1}"
    result = train(rl_config(tmp_path, "failing", rewards, "train.max_steps=1", "rollout.prompts_per_step=1"))
    steps = train_steps(result.run_dir)
    assert steps[1]["reward_errors"] == 3 * G  # three failing functions on the G samples of one prompt
    assert list_checkpoints(result.run_dir)


# ------------------------------------------------------------------------------------------ timeouts


def test_the_timeout_is_configurable_and_off_with_0_or_null():
    assert RewardsConfig().timeout == 30
    assert build_rewards(RewardsConfig(timeout=None)).timeout is None
    with pytest.raises(ValidationError):
        RewardsConfig(timeout=-1)


def test_a_sleeping_and_a_spinning_reward_time_out_as_errors_and_scoring_goes_on(registered):
    started = time.monotonic()
    batch = score(registered("sleeps", sleeps), registered("spins", spins), registered("fine", ok),
                  timeout=TIMEOUT)
    elapsed = time.monotonic() - started
    assert 4 * TIMEOUT <= elapsed < 4 * TIMEOUT + 3  # four calls, each stopped at about the limit
    assert batch.errors == {"sleeps": 2, "spins": 2, "fine": 0}
    assert batch.components["fine"] == [1.0, 1.0]
    assert batch.error_examples["sleeps"] == f"sample 0: timed out after {TIMEOUT:g} s"
    assert batch.error_examples["spins"] == f"sample 0: timed out after {TIMEOUT:g} s"


def test_a_reward_that_runs_its_own_model_is_not_time_limited():
    def slow_judge(prompt, completion, record):
        time.sleep(2 * TIMEOUT)
        return 0.5

    register_reward("slow_judge_test", time_limited=False)(slow_judge)
    try:
        batch = score({"name": "slow_judge_test"}, completions=("a",), timeout=TIMEOUT)
    finally:
        REWARDS.pop("slow_judge_test")
    assert batch.errors == {"slow_judge_test": 0} and batch.components["slow_judge_test"] == [0.5]
    assert not REWARDS["judge"].time_limited and REWARDS["math"].time_limited


def test_a_reward_that_swallows_the_interruption_still_times_out(registered):
    def stubborn(prompt, completion, record):
        try:
            time.sleep(100)
        except BaseException:
            return 1.0

    assert score(registered("stubborn", stubborn), timeout=TIMEOUT).errors == {"stubborn": 2}


def test_too_many_timeouts_stop_the_run_and_say_which_setting_to_raise(registered):
    config = RewardsConfig(functions=[registered("slow", sleeps)], timeout=0.1)
    with pytest.raises(RewardError, match="timed out after 0.1 s") as error:
        build_rewards(config).score(["p"], ["a"], [{}])
    assert "rewards.timeout (now 0.1 s)" in str(error.value)


@pytest.mark.skipif(INTERRUPT_SIGNAL is None, reason="no real-time signals on this platform")
def test_the_interrupt_signal_handler_is_restored_and_quick_calls_are_untouched(registered):
    def previous(signum, frame):
        raise AssertionError("the previous handler must not see the interruptions")

    old = signal.signal(INTERRUPT_SIGNAL, previous)
    try:
        batch = score(registered("quick", ok), completions=["x"] * 500, timeout=0.01)
        score(registered("slow_one", sleeps), completions=["x"], timeout=0.05)
        assert signal.getsignal(INTERRUPT_SIGNAL) is previous
        time.sleep(0.1)  # no stray interruption arrives later
    finally:
        signal.signal(INTERRUPT_SIGNAL, old)
    assert batch.errors == {"quick": 0}


def test_off_the_main_thread_a_hung_reward_times_out_too(registered):
    spec = registered("spins_in_thread", spins)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(batch=score(spec, completions=["a"], timeout=TIMEOUT)))
    thread.start()
    thread.join(30)  # the reward spins forever: only the timeout ends it
    assert not thread.is_alive()
    assert outcome["batch"].errors == {"spins_in_thread": 1}
    deadline = time.monotonic() + 5  # the abandoned worker is stopped by an injected exception
    while any(t.name == "posttrain-reward-call" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "posttrain-reward-call" for t in threading.enumerate())


def test_the_builtin_math_reward_and_math_verify_alarms_work_under_the_timeout(registered):
    alarm_handler = signal.getsignal(signal.SIGALRM)
    completions = ["so \\boxed{\\frac{2}{4}}", "\\boxed{\\sqrt{4}}", "#### 0.5", "\\boxed{x+1}"]
    records = [{"reference": "\\frac{1}{2}"}, {"reference": "2"}, {"reference": "1/2"}, {"reference": "1+x"}]
    config = RewardsConfig(functions=[RewardSpec(name="math")], timeout=5)
    batch = build_rewards(config).score(["p"] * 4, completions, records)
    assert batch.components["math"] == [1.0, 1.0, 1.0, 1.0] and batch.errors == {"math": 0}
    assert signal.getsignal(signal.SIGALRM) is alarm_handler
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)

    def verifies_then_hangs(prompt, completion, record):
        assert answers_match("\\frac{1}{2}", "\\frac{2}{4}")  # math-verify arms and cancels SIGALRM
        time.sleep(100)

    started = time.monotonic()
    assert score(registered("verifies_then_hangs", verifies_then_hangs), completions=["a"],
                 timeout=TIMEOUT).errors == {"verifies_then_hangs": 1}
    assert time.monotonic() - started < 30  # not the 100 s the function sleeps (a wide margin for a busy host)


def test_math_verify_timeouts_still_work_inside_a_limited_call():
    def alarm_inside():
        from math_verify.utils import timeout

        @timeout(1)
        def slow():
            time.sleep(100)

        try:
            slow()
        except BaseException as error:  # math-verify's TimeoutException
            return type(error).__name__
        return "not stopped"

    started = time.monotonic()
    assert call_with_timeout(alarm_inside, 60) == "TimeoutException"
    assert time.monotonic() - started < 30  # math-verify's own 1 s alarm, not the 100 s sleep nor our 60 s


# ------------------------------------------------------------------- math eval on non-math references


def test_math_eval_counts_references_that_are_not_math(tmp_path):
    script = [[("#### 8", 3, "eos")], [("#### Paris", 3, "eos")], [("#### ???", 3, "eos")]]
    result = evaluate_math(ScriptedEngine(script), [[1], [2], [3]], ["8", "Paris", "???"],
                           params=SamplingParams(temperature=0), out_dir=tmp_path)
    assert result.unparsed_references == 2
    assert result.to_dict()["unparsed_references"] == 2
    assert [is_math_answer(answer) for answer in ("8", "\\frac{1}{2}", "x+1", "18 dollars", "Paris", "???")] \
        == [True, True, True, True, False, False]


def test_math_eval_with_no_math_reference_is_a_data_error_before_sampling():
    engine = ScriptedEngine([[("#### blue", 2, "eos")], [("#### yes", 2, "eos")]])
    with pytest.raises(DataError, match="none of the 2 reference answers is a number") as error:
        evaluate_math(engine, [[1], [2]], ["blue", "yes"], params=SamplingParams(temperature=0))
    assert "references[0]" in str(error.value) and "How to fix" in str(error.value)
    assert engine.calls == []


def run_main(monkeypatch, *args: str) -> int:
    """``posttrain ARGS`` in this process: the exit code (stdout and stderr go to capsys)."""
    from posttrain.cli import main

    monkeypatch.setattr(sys, "argv", ["posttrain", *args])
    with pytest.raises(SystemExit) as done:
        main()
    return done.value.code


def test_eval_math_command_prints_and_writes_the_unparsed_count_and_refuses_all_unparsed(
        tmp_path, monkeypatch, capsys):
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q{i}", "reference": ref}) + "\n"
                            for i, ref in enumerate(["4", "Paris", "yes"])))
    args = ["eval", "math", "--model", "tiny-random", "--max-new-tokens", "2", "--batch-size", "4"]
    assert run_main(monkeypatch, *args, "--data", str(data), "--out", str(tmp_path / "ev")) == 0
    printed = capsys.readouterr()
    assert "unparsed_references: 2" in printed.out
    assert "warning: 2 of 3 reference answers" in printed.err
    assert json.loads((tmp_path / "ev" / "math.json").read_text())["unparsed_references"] == 2

    words = tmp_path / "words.jsonl"
    words.write_text("".join(json.dumps({"prompt": "Q", "reference": ref}) + "\n" for ref in ["Paris", "yes"]))
    assert run_main(monkeypatch, *args, "--data", str(words)) == 2
    printed = capsys.readouterr()
    assert "none of the 2 reference answers is a number or a math expression" in printed.err
    assert "Traceback" not in printed.err


# ------------------------------------------------------------------------------------ data make --n 0


@pytest.mark.parametrize("n", [0, -3])
def test_make_task_file_refuses_no_records(tmp_path, n):
    out = tmp_path / "empty.jsonl"
    with pytest.raises(ConfigError, match="at least 1"):
        make_task_file("arithmetic", n, 0, out)
    assert not out.exists()


def test_data_make_with_n_0_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "empty.jsonl"
    assert run_main(monkeypatch, "data", "make", "arithmetic", "--n", "0", "--out", str(out)) == 2
    assert "at least 1" in capsys.readouterr().err
    assert not out.exists()
