"""Self-distillation with per-rollout feedback: SDPO's teacher contexts (teacher: self_feedback), SD-Zero's
revisions (teacher: self_revision), their config checks and the SDPO/SRPO/SD-Zero recipes."""

from pathlib import Path

import pytest
import torch

from posttrain.config import FeedbackConfig, load_config
from posttrain.errors import ConfigError, DataError
from posttrain.models import tiny_model, tiny_tokenizer
from posttrain.ops import token_divergence
from posttrain.trainers.distill import DistillMethod
from posttrain.trainers.distributed import Processes
from posttrain.trainers.feedback import RolloutFeedback, rollout_feedback, teacher_record
from posttrain.trainers.run import train
from tests.helpers import read_jsonl, step_gradients, train_steps
from tests.rl_helpers import REWARD_SOURCE, reward
from tests.test_distill import PROMPTS, crashed_in_step_three_and_resumed, distill_config, full_row_logits

RECIPES = Path(__file__).resolve().parents[1] / "posttrain" / "recipes" / "sdpo"
TEMPLATE = "{prompt} | attempt: {attempt} | {feedback} | retry"


def test_feedback_is_built_per_rollout_from_its_own_group():
    cfg = FeedbackConfig(sources=["sibling", "verdict", "field"], template=TEMPLATE)
    groups, texts = [0, 0, 0, 1, 1], ["a0", "a1", "a2", "b0", "b1"]
    rewards, fields = [0.0, 1.0, 1.0, 0.0, float("nan")], ["err a0", None, "", "err b0", None]
    feedback = rollout_feedback(groups, texts, rewards, fields, cfg)
    assert [f.demonstration for f in feedback] == [1, 2, 1, None, None]  # never itself, never another group
    assert feedback[0].kinds == ("sibling", "verdict", "field")
    assert feedback[0].text == "A correct solution:\n\na1\n\nYour earlier attempt was incorrect.\n\n" \
                               "Feedback on your earlier attempt:\n\nerr a0"
    assert feedback[1].kinds == ("sibling", "verdict") and "was correct" in feedback[1].text
    assert feedback[3].kinds == ("verdict", "field") and feedback[4].kinds == ("verdict",)  # NaN reward: failed
    record = {"prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Q?"}], "answer": "4"}
    teacher = teacher_record(record, "a0", feedback[0], cfg)
    assert teacher["prompt"][0] == record["prompt"][0] and teacher["answer"] == "4"
    assert teacher["prompt"][1]["content"] == f"Q? | attempt: a0 | {feedback[0].text} | retry"
    assert teacher_record(record, "a0", RolloutFeedback((), ""), cfg) is record  # no feedback: the student's prompt
    assert rollout_feedback([0, 0], ["x", "y"], None, [None, None], cfg) == [RolloutFeedback((), "")] * 2


def test_the_default_teacher_sees_the_feedback_but_not_the_attempt_it_scores():
    """SDPO's code and TRL leave the attempt out of the teacher's message: a teacher that reads it predicts the
    attempt's own next tokens and distillation then reinforces whatever was sampled (docs/reproductions.md)."""
    cfg = FeedbackConfig(sources=["sibling"])
    feedback = rollout_feedback([0, 0], ["wrong attempt 41", "right one 42"], [0.0, 1.0], [None, None], cfg)
    prompt = teacher_record({"prompt": "Q?"}, "wrong attempt 41", feedback[0], cfg)["prompt"]
    assert prompt.startswith("Q?") and "right one 42" in prompt and "wrong attempt 41" not in prompt
    shown = teacher_record({"prompt": "Q?"}, "wrong attempt 41", feedback[0], FeedbackConfig(template=TEMPLATE))
    assert "attempt: wrong attempt 41" in shown["prompt"]  # still available as {attempt}


def sdpo_method(tmp_path, model, *settings, answers=True):
    """A DistillMethod over 4 prompts × 2 samples × 12 tokens, rewards = the 0/1 `even` verifier, and step 0."""
    (tmp_path / "r.py").write_text(REWARD_SOURCE)
    config = distill_config(tmp_path, "sdpo", "rollout.prompts_per_step=4", "rollout.max_new_tokens=12",
                            "train.batch_size=8", f"distill.rewards={{functions: [{{path: {tmp_path / 'r.py'}:even}}]}}",
                            *settings)
    records = [{"prompt": p, "reference": "1", **({"answer": f"Reference solution {i}"} if answers else {})}
               for i, p in enumerate(PROMPTS[:4])]
    method = DistillMethod(config, records, model, tiny_tokenizer(), Processes("cpu"))
    share = list(range(4))
    return method, method.step_batches(model, share, share, step=0)


def test_each_rollouts_teacher_sees_its_attempt_its_verdict_and_a_correct_sibling(tmp_path):
    model = tiny_model()
    method, work = sdpo_method(tmp_path, model, "distill.teacher=self_feedback",
                               f"distill.feedback={{sources: [sibling, verdict], template: '{TEMPLATE}'}}")
    batch = work.micro_batches[0]
    generations = batch.generations
    correct = [reward("even", g.text) == 1.0 for g in generations]
    assert 0 < sum(correct) < len(correct)  # both verdicts occur
    decode = tiny_tokenizer().decode
    siblings_shown = 0
    for row, g in enumerate(generations):
        start = int(batch.teacher_rows.target_mask[row].argmax()) + 1  # the first completion token
        teacher_prompt = decode(batch.teacher_rows.input_ids[row, :start])
        assert teacher_prompt.startswith(method.records[g.prompt_index]["prompt"] + " | attempt: " + g.text + " | ")
        assert f"was {'correct' if correct[row] else 'incorrect'}." in teacher_prompt
        others = [h for h in generations if h.prompt_index == g.prompt_index and h is not g]
        demos = [h for h, ok in zip(generations, correct, strict=True) if ok and h in others]
        if demos:  # the first correct sibling of the same prompt is the demonstration
            siblings_shown += 1
            assert f"A correct solution:\n\n{demos[0].text}\n\n" in teacher_prompt
        else:
            assert "A correct solution" not in teacher_prompt
        assert batch.teacher_rows.input_ids[row, start : start + len(g)].tolist() == g.token_ids
    assert work.stats["feedback/verdict"] == len(generations) and work.stats["feedback/sibling"] == siblings_shown
    assert batch.distilled == [True] * len(generations) and float(method.loss(model, batch, work.totals)[0]) > 0


def test_without_feedback_sdpo_is_the_plain_self_teacher(tmp_path):
    """No rollout has a correct sibling: with no_feedback=prompt the teacher is the student's own forward
    (teacher: self, here reheated at T = 1.5), with no_feedback=skip nothing is distilled."""
    model = tiny_model()
    unreachable = ["distill.teacher_temperature=1.5", "distill.teacher=self_feedback",
                   "distill.feedback.success_threshold=2.0"]
    method, work = sdpo_method(tmp_path, model, *unreachable, "distill.feedback.no_feedback=prompt")
    plain, plain_work = sdpo_method(tmp_path, model, "distill.teacher_temperature=1.5", "distill.teacher=self")
    assert [g.token_ids for g in work.micro_batches[0].generations] == \
           [g.token_ids for g in plain_work.micro_batches[0].generations]
    assert work.stats["feedback/none"] == work.stats["rollouts"] == work.stats["feedback/distilled"]
    loss, grads = step_gradients(model, method, work)
    plain_loss, plain_grads = step_gradients(model, plain, plain_work)
    assert loss > 1e-3 and loss == pytest.approx(plain_loss, rel=1e-5)
    for a, b in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    skipped, skipped_work = sdpo_method(tmp_path, model, *unreachable)
    assert skipped_work.stats["feedback/distilled"] == 0
    assert step_gradients(model, skipped, skipped_work)[0] == 0.0


def test_field_feedback_worded_as_the_context_is_the_self_context_teacher(tmp_path):
    model = tiny_model()
    method, work = sdpo_method(tmp_path, model, "distill.teacher=self_feedback", "distill.divergence=reverse_kl",
                               "distill.feedback={sources: [field], field: answer, phrases: {field: '{text}'}, "
                               "template: '{feedback} | {prompt}'}")
    context, context_work = sdpo_method(tmp_path, model, "distill.teacher=self_context", "distill.divergence=reverse_kl",
                                        "distill.context_template='{context} | {prompt}'")
    loss, grads = step_gradients(model, method, work)
    context_loss, context_grads = step_gradients(model, context, context_work)
    assert loss > 0 and loss == pytest.approx(context_loss, rel=1e-6)
    for a, b in zip(grads, context_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_sd_zero_distills_the_reviser_into_the_generator_on_the_revision_tokens(tmp_path):
    model = tiny_model()
    method, work = sdpo_method(tmp_path, model, "distill.teacher=self_revision", "distill.divergence=reverse_kl",
                               "distill.feedback.revision_template='{prompt} / {attempt} / {verdict} / revise'")
    batch = work.micro_batches[0]
    assert work.stats["revisions"] == work.stats["rollouts"] == len(batch.generations)
    decode = tiny_tokenizer().decode
    expected, record_prompts = 0.0, {r["prompt"] for r in method.records}
    for revision, student_prompt in zip(batch.generations, batch.student.input_ids, strict=True):
        reviser_prompt = decode(revision.prompt_ids)
        question, attempt, verdict, tail = reviser_prompt.split(" / ")
        assert question in record_prompts and verdict == ("correct" if reward("even", attempt) == 1 else "incorrect")
        assert tail == "revise"
        own_prompt = method.prompts[PROMPTS.index(question)]
        assert student_prompt[: len(own_prompt)].tolist() == own_prompt
        student = full_row_logits(model, own_prompt, revision.token_ids)
        teacher = full_row_logits(model, revision.prompt_ids, revision.token_ids)
        expected += float(token_divergence(student, teacher, "reverse_kl").sum())
    assert work.totals.tokens == sum(len(r) for r in batch.generations)
    loss, _ = method.loss(model, batch, work.totals)
    assert float(loss) == pytest.approx(expected / work.totals.tokens, rel=1e-4) and float(loss) > 0


def test_a_short_sdpo_run_logs_the_feedback_it_used(tmp_path):
    (tmp_path / "r.py").write_text(REWARD_SOURCE)
    config = distill_config(tmp_path, "run", "distill.teacher=self_feedback", "train.max_steps=2",
                            f"distill.rewards={{functions: [{{path: {tmp_path / 'r.py'}:even}}]}}",
                            "distill.feedback.sources=[sibling, verdict]", "distill.entropy_weighting=exp")
    run_dir = train(config).run_dir
    metrics, samples = train_steps(run_dir), read_jsonl(run_dir / "samples.jsonl")
    assert all(row["distilled"] and row["feedback"][-1] == "verdict" for row in samples)
    for step, logged in metrics.items():
        shown = [row for row in samples if row["step"] == step and "sibling" in row["feedback"]]
        assert logged["feedback_sibling"] == pytest.approx(len(shown) / 4)
        assert logged["feedback_verdict"] == 1.0 and logged["feedback_distilled"] == 1.0
        assert 0 <= logged["feedback_sibling"] <= 1 and 0 < logged["distill_weight"] < 1


def test_bad_feedback_settings_are_refused(tmp_path):
    cases = [
        (["distill.feedback.sources=[verdict]"], "used by teacher: self_feedback"),
        (["distill.teacher=self_feedback", "distill.feedback.sources=[sibling]"], "set distill.rewards"),
        (["distill.teacher=self_revision"], "set distill.rewards"),
        (["distill.teacher=self_feedback", "distill.feedback={sources: [field], template: '{prompt} {attempt}'}"],
         "must contain {prompt} and {feedback}"),
        (["distill.teacher=self_feedback", "distill.feedback={sources: [field, field]}"], "a kind twice"),
        (["distill.teacher=self_feedback", "distill.feedback={sources: [field], phrases: {hint: x}}"], "unknown kinds"),
        (["distill.teacher=self_feedback", "distill.feedback={sources: [field], phrases: {field: '{x}'}}"],
         r"only contain \{text\}"),
        (["distill.teacher=self_revision", "distill.feedback.revision_template='{prompt}'"], "revision_template"),
        (["distill.entropy_weighting=cubic"], "entropy_weighting"),
    ]
    for settings, match in cases:
        with pytest.raises(ConfigError, match=match):
            distill_config(tmp_path, "bad", *settings)
    config = distill_config(tmp_path, "nofield", "distill.teacher=self_feedback", "distill.feedback.sources=[field]")
    with pytest.raises(DataError, match="no record has a 'feedback' field"):
        train(config)
    assert not (tmp_path / "nofield" / "metrics.jsonl").exists()


@pytest.mark.parametrize("recipe", sorted(p for p in RECIPES.glob("*.yaml") if "stages:" not in p.read_text()),
                         ids=lambda p: p.name)  # the pipelines among them load in test_pipeline.py
def test_sdpo_recipes_validate(recipe):
    config = load_config(recipe)
    assert config.distill.teacher in ("self_feedback", "self_revision") and config.model.name == "smollm2-135m"


class FakeAccelerator:
    """The one-process accelerator TRL's context builder reads."""

    device, process_index = torch.device("cpu"), 0

    @staticmethod
    def gather(values):
        return values

    @staticmethod
    def pad_across_processes(values, dim, pad_index):
        return values


def trl_sdpo_reprompts(prompts, completion_ids, rewards, group_size, feedbacks=None, **options):
    """The teacher messages and distillation mask of TRL 1.16's SDPO context builder (one process)."""
    from types import SimpleNamespace

    from trl.experimental.sdpo.sdpo_config import SDPOConfig
    from trl.experimental.sdpo.sdpo_trainer import SuccessfulRolloutTeacherContextBuilder

    tokenizer = tiny_tokenizer()
    fields = SDPOConfig.__dataclass_fields__
    args = SimpleNamespace(**{name: fields[name].default for name in (
        "reprompt_template", "solution_template", "feedback_template", "success_reward_threshold",
        "dont_reprompt_on_self_success", "use_successful_as_teacher", "environment_feedback_only_without_solution",
        "remove_thinking_from_demonstration", "max_reprompt_len", "include_environment_feedback")})
    for name, value in options.items():
        setattr(args, name, value)
    seen = []

    def tokenize(messages):
        seen.extend(messages)
        return [tokenizer(m)["input_ids"] for m in messages]

    trainer = SimpleNamespace(args=args, accelerator=FakeAccelerator(), num_generations=group_size,
                              model=SimpleNamespace(training=True), _tokenizer=tokenizer, processing_class=tokenizer,
                              _tokenize_prompts_untruncated=tokenize)
    completions = torch.nn.utils.rnn.pad_sequence([torch.tensor(c) for c in completion_ids], batch_first=True,
                                                  padding_value=tokenizer.pad_token_id)
    out = SuccessfulRolloutTeacherContextBuilder(trainer).build(
        {"completion_ids": completions, "completion_mask": (completions != tokenizer.pad_token_id).long()},
        prompts, torch.tensor(rewards), feedbacks)
    return seen, out["self_distillation_mask"].bool().tolist()


@pytest.mark.parametrize("with_field", [False, True])
def test_sdpo_contexts_match_trls_reprompts(with_field):
    """Worded as TRL's SDPO (template "{prompt}{feedback}…", its solution/feedback phrases, the attempt not shown),
    the teacher prompts and the rollouts distilled are TRL 1.16's, siblings and environment feedback alike."""
    tokenizer = tiny_tokenizer()
    texts = ["12", "7", "12", "x", "y", "5", "6", "5"]
    rewards = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    errors = [None, "wrong sum", None, "", "bad format", None, None, "off by one"]
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    prompts = ["What is 5+7?", "Name a number."]
    sources = ["sibling", "field"] if with_field else ["sibling"]
    cfg = FeedbackConfig(sources=sources, separator="",
                         template="{prompt}{feedback}\n\nCorrectly solve the original question.\n",
                         phrases={"sibling": "\nCorrect solution:\n\n{text}\n\n",
                                  "field": "\nThe following is feedback from your unsuccessful earlier attempt:\n\n"
                                           "{text}\n\n"})
    feedback = rollout_feedback(groups, texts, rewards, errors, cfg)
    ours = [teacher_record({"prompt": prompts[g]}, t, f, cfg)["prompt"]
            for g, t, f in zip(groups, texts, feedback, strict=True)]
    theirs, mask = trl_sdpo_reprompts([prompts[g] for g in groups], [tokenizer(t)["input_ids"] for t in texts],
                                      rewards, 4, feedbacks=errors if with_field else None,
                                      include_environment_feedback=with_field)
    assert ours == theirs
    assert [bool(f.kinds) for f in feedback] == mask and 0 < sum(mask) < len(mask)


def ema_settings(tmp_path) -> list[str]:
    (tmp_path / "r.py").write_text(REWARD_SOURCE)
    return ["distill.teacher=self_feedback", "distill.context_weights=ema", "distill.teacher_update_rate=0.25",
            f"distill.rewards={{functions: [{{path: {tmp_path / 'r.py'}:even}}]}}", "distill.feedback.sources=[verdict]"]


def test_the_ema_teacher_moves_toward_the_student_by_the_update_rate(tmp_path):
    from posttrain.trainers.teacher import DistillTeacher

    model = tiny_model()
    config = distill_config(tmp_path, "ema", *ema_settings(tmp_path))
    teacher = DistillTeacher(config, model, tiny_tokenizer(), Processes("cpu"))
    start = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, s) for a, s in zip(teacher.average.parameters(), start, strict=True))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    teacher.update_average(model)  # θ_T = 0.75·θ_0 + 0.25·(θ_0 + 1)
    for average, s in zip(teacher.average.parameters(), start, strict=True):
        torch.testing.assert_close(average, s + 0.25)
    assert not any(p.requires_grad for p in teacher.average.parameters())
    live = distill_config(tmp_path, "live", *ema_settings(tmp_path), "distill.context_weights=live")
    assert DistillTeacher(live, model, tiny_tokenizer(), Processes("cpu")).average is None


def test_an_ema_teacher_run_resumes_exactly(tmp_path, monkeypatch):
    settings = [*ema_settings(tmp_path), "train.max_steps=3", "train.save_every=2"]
    whole = train_steps(train(distill_config(tmp_path, "whole", *settings)).run_dir)
    assert (tmp_path / "whole" / "checkpoints" / "step-2" / "ema_teacher" / "model.safetensors").is_file()
    resumed = crashed_in_step_three_and_resumed(tmp_path, monkeypatch, settings)
    for key in ("loss", "divergence", "grad_norm"):  # step 3's teacher is the average saved at step 2
        assert resumed[3][key] == pytest.approx(whole[3][key], rel=1e-5, abs=1e-7), key
    live = train_steps(train(distill_config(tmp_path, "live", *settings, "distill.context_weights=live")).run_dir)
    assert live[3]["divergence"] != pytest.approx(whole[3]["divergence"], rel=1e-4)


def test_ema_settings_that_cannot_work_are_refused(tmp_path):
    for settings, match in ((["distill.teacher=snapshot", "distill.context_weights=ema"], "self-teacher shown a context"),
                            ([*ema_settings(tmp_path), "model.lora={r: 4}"], "with model.lora"),
                            ([*ema_settings(tmp_path), "dist.strategy=fsdp"], "dist.strategy=fsdp"),
                            ([*ema_settings(tmp_path), "distill.teacher_update_rate=0"], "teacher_update_rate")):
        with pytest.raises(ConfigError, match=match):
            distill_config(tmp_path, "bad", *settings)
