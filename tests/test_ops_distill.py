"""Distillation divergences: TRL 1.16 GKD parity, the KL special cases, chunking, top-k, clipping, G-OPD rewards."""

import math

import pytest
import torch

from posttrain.ops import distill_divergence, extrapolated_token_rewards, hidden_divergence, token_divergence

V = 37


def random_logits(*shape, scale=3.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, V, generator=generator, dtype=torch.float64) * scale


def explicit_kl(log_a, log_b):
    return (log_a.exp() * (log_a - log_b)).sum(-1)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_jsd_equals_trl_gkd_generalized_jsd(beta, temperature):
    gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
    student, teacher = random_logits(3, 7), random_logits(3, 7, seed=1)
    mask = torch.rand(3, 7, generator=torch.Generator().manual_seed(2)) > 0.3
    labels = torch.where(mask, torch.zeros(3, 7, dtype=torch.long), torch.full((3, 7), -100))
    theirs = gkd.GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=beta, temperature=temperature)
    # TRL divides both sides by its temperature; here only the teacher's temperature is a parameter
    ours = distill_divergence(student / temperature, teacher, mask, kind="jsd", beta=beta,
                              teacher_temperature=temperature, chunk_size=5)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-10, atol=1e-12)


def test_jsd_endpoints_are_the_two_kls_and_the_kls_match_their_definition():
    student, teacher = random_logits(11), random_logits(11, seed=3)
    log_p, log_q = torch.log_softmax(student, -1), torch.log_softmax(teacher / 1.5, -1)
    forward = token_divergence(student, teacher / 1.5, "forward_kl")
    reverse = token_divergence(student, teacher / 1.5, "reverse_kl")
    torch.testing.assert_close(forward, explicit_kl(log_q, log_p))
    torch.testing.assert_close(reverse, explicit_kl(log_p, log_q))
    torch.testing.assert_close(token_divergence(student, teacher / 1.5, "jsd", beta=0.0), forward)
    torch.testing.assert_close(token_divergence(student, teacher / 1.5, "jsd", beta=1.0), reverse)
    middle = token_divergence(student, teacher / 1.5, "jsd", beta=0.5)
    log_m = torch.log(0.5 * log_p.exp() + 0.5 * log_q.exp())
    torch.testing.assert_close(middle, 0.5 * explicit_kl(log_q, log_m) + 0.5 * explicit_kl(log_p, log_m))
    assert (middle <= math.log(2) + 1e-12).all() and (middle >= 0).all()  # JSD_0.5 is bounded by log 2


def test_teacher_gets_no_gradient_and_equal_distributions_give_zero():
    student = random_logits(4).requires_grad_()
    teacher = random_logits(4, seed=5).requires_grad_()
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        distill_divergence(student, teacher, torch.ones(4), kind=kind).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    same = distill_divergence(student, 2.0 * student.detach(), torch.ones(4), teacher_temperature=2.0)
    assert float(same.detach()) == pytest.approx(0.0, abs=1e-12)


def test_masked_mean_over_tokens_and_empty_mask():
    student, teacher = random_logits(2, 5), random_logits(2, 5, seed=7)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 1]])
    per_token = token_divergence(student, teacher, "reverse_kl")
    expected = (per_token * mask).sum() / mask.sum()
    torch.testing.assert_close(distill_divergence(student, teacher, mask, kind="reverse_kl"), expected)
    assert float(distill_divergence(student, teacher, torch.zeros(2, 5))) == 0.0


def test_top_k_restricts_both_to_the_teachers_support():
    student, teacher = random_logits(6), random_logits(6, seed=9)
    torch.testing.assert_close(token_divergence(student, teacher, "forward_kl", top_k=V),
                               token_divergence(student, teacher, "forward_kl"))
    k = 4
    support = teacher.topk(k, -1).indices
    log_p = torch.log_softmax(student.gather(-1, support), -1)
    log_q = torch.log_softmax(teacher.gather(-1, support), -1)
    torch.testing.assert_close(token_divergence(student, teacher, "reverse_kl", top_k=k), explicit_kl(log_p, log_q))


def test_clip_caps_each_token_and_stops_its_gradient():
    student = random_logits(8, scale=6.0).requires_grad_()
    teacher = random_logits(8, seed=11, scale=6.0)
    values = token_divergence(student, teacher, "forward_kl").detach()
    cap = float(values.median())
    loss = distill_divergence(student, teacher, torch.ones(8), clip=cap)
    torch.testing.assert_close(loss, values.clamp(max=cap).mean())
    loss.backward()
    capped = values > cap
    assert capped.any() and (student.grad[capped] == 0).all() and (student.grad[~capped].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("teacher_kind", ["self", "other"])
def test_hidden_divergence_equals_explicit_logits_with_checkpointed_chunks(teacher_kind):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(13, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, V, (13,), generator=generator)
    teacher_hidden = torch.randn(13, 8, generator=generator, dtype=torch.float64)
    teacher_weight = torch.randn(V, 8, generator=generator, dtype=torch.float64)
    other = teacher_kind == "other"
    out = hidden_divergence(hidden, weight, labels, teacher_hidden if other else None,
                            teacher_weight if other else None, kind="jsd", beta=0.3, teacher_temperature=1.7,
                            chunk_size=4)
    out.divergence.sum().backward()
    got = [hidden.grad.clone(), weight.grad.clone()]
    hidden.grad = weight.grad = None

    logits = hidden @ weight.t()
    teacher = (teacher_hidden @ teacher_weight.t()) if other else logits.detach()
    expected = token_divergence(logits, teacher / 1.7, "jsd", beta=0.3)
    torch.testing.assert_close(out.divergence, expected)
    expected.sum().backward()
    torch.testing.assert_close(got[0], hidden.grad)
    torch.testing.assert_close(got[1], weight.grad)
    log_p = torch.log_softmax(logits.detach(), -1)
    torch.testing.assert_close(out.entropy, -(log_p.exp() * log_p).sum(-1))
    torch.testing.assert_close(out.student_logprob.detach(), log_p.gather(-1, labels[:, None])[:, 0])
    log_q = torch.log_softmax(teacher / 1.7, -1)
    torch.testing.assert_close(out.teacher_logprob, log_q.gather(-1, labels[:, None])[:, 0])


def test_self_teacher_at_temperature_one_is_zero_and_hotter_teacher_pushes_entropy_up():
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(9, 8, generator=generator, requires_grad=True)
    weight = torch.randn(V, 8, generator=generator) * 3
    labels = torch.zeros(9, dtype=torch.long)
    assert float(hidden_divergence(hidden, weight, labels).divergence.detach().abs().max()) < 1e-6
    out = hidden_divergence(hidden, weight, labels, teacher_temperature=2.0)
    out.divergence.sum().backward()
    with torch.no_grad():  # one gradient step on the hidden states raises the student's entropy
        stepped = hidden - 0.05 * hidden.grad
        after = hidden_divergence(stepped, weight, labels, teacher_temperature=2.0)
    assert float(after.entropy.mean()) > float(out.entropy.mean())


def test_gopd_token_rewards():
    student, teacher, reference = torch.tensor([-1.0, -2.0]), torch.tensor([-0.5, -3.0]), torch.tensor([-2.0, -2.5])
    torch.testing.assert_close(extrapolated_token_rewards(student, teacher, None), teacher - student)
    torch.testing.assert_close(extrapolated_token_rewards(student, teacher, reference, 1.0), teacher - student)
    expected = 1.5 * (teacher - reference) - (student - reference)
    torch.testing.assert_close(extrapolated_token_rewards(student, teacher, reference, 1.5), expected)
    with pytest.raises(ValueError, match="reference"):
        extrapolated_token_rewards(student, teacher, None, 1.5)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"kind": "tv"}, "unknown divergence kind"),
    ({"teacher_temperature": 0.0}, "must be > 0"),
    ({"teacher_temperature": -1.0}, "must be > 0"),
    ({"top_k": V + 1}, "top_k"),
    ({"kind": "jsd", "beta": 1.5}, "beta"),
])
def test_bad_arguments_are_value_errors(kwargs, match):
    student = random_logits(3)
    with pytest.raises(ValueError, match=match):
        distill_divergence(student, student, torch.ones(3), **kwargs)
