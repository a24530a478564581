"""AdamW with bf16 moments (``optim.state_dtype: bfloat16``): unbiased stochastic rounding, agreement with
``torch.optim.AdamW`` in expectation, exact continuation from a saved state, and the run-level option."""

import pytest
import torch

from posttrain.config import OptimConfig
from posttrain.trainers.optimizer import AdamWBF16State, build_optimizer, round_bits_stochastic_


def round_to_bf16_stochastic(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``values`` rounded by the optimizer's rounding with fresh uniform 16-bit noise per element."""
    noise = torch.randint(0, 1 << 16, values.shape, dtype=torch.int32, generator=generator)
    return round_bits_stochastic_(values.clone(), noise).to(torch.bfloat16)


def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour():
    generator = torch.Generator().manual_seed(0)
    values = torch.tensor([1.0 + 2**-10, -3.14159, 1e-7, 0.1, 1000.3])
    draws = torch.stack([round_to_bf16_stochastic(values, generator).float() for _ in range(20000)])
    truncated = (values.view(torch.int32) & -65536)  # the bf16 neighbour towards zero, and the one away from it
    toward_zero, away = truncated.view(torch.float32), (truncated + 65536).view(torch.float32)
    for column, value in enumerate(values.tolist()):
        drawn = set(draws[:, column].tolist())
        assert drawn == {float(toward_zero[column]), float(away[column])}
        gap = abs(float(away[column]) - float(toward_zero[column]))
        # the mean of 20000 draws is within 4 standard errors (≤ gap/2 each) of the value: unbiased
        assert abs(float(draws[:, column].mean()) - value) <= 4 * gap / (2 * 20000**0.5)
    exact = torch.tensor([1.0, -2.5, 0.0])  # bf16-representable values never move
    assert torch.equal(round_to_bf16_stochastic(exact, generator).float(), exact)


def test_round_to_nearest_would_stall_the_second_moment():
    """The reason for stochastic rounding: with β2 = 0.999 nearest rounding never lets v decay."""
    v = torch.tensor([1.0], dtype=torch.bfloat16)
    for _ in range(100):
        v = (v.float() * 0.999).to(torch.bfloat16)
    assert float(v) == 1.0
    generator = torch.Generator().manual_seed(0)
    w = torch.ones(4096, dtype=torch.bfloat16)
    for _ in range(100):
        w = round_to_bf16_stochastic(w.float() * 0.999, generator)
    assert float(w.float().mean()) == pytest.approx(0.999**100, rel=2e-3)


def regression_problem(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs, targets = torch.randn(64, 32, generator=generator), torch.randn(64, 8, generator=generator)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8))
    torch.manual_seed(seed)
    for layer in (model[0], model[2]):
        layer.reset_parameters()
    return model, inputs, targets


def train(model, optimizer, inputs, targets, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def test_bf16_moments_follow_torch_adamw():
    settings = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}
    reference, inputs, targets = regression_problem()
    ours, _, _ = regression_problem()
    start = [p.detach().clone() for p in reference.parameters()]
    reference_losses = train(reference, torch.optim.AdamW(reference.parameters(), **settings), inputs, targets, 60)
    optimizer = AdamWBF16State(ours.parameters(), seed=3, **settings)
    our_losses = train(ours, optimizer, inputs, targets, 60)
    assert our_losses[0] == reference_losses[0]
    assert our_losses[-1] == pytest.approx(reference_losses[-1], rel=0.02) and our_losses[-1] < 0.5 * our_losses[0]
    for state in optimizer.state.values():
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.bfloat16
    for mine, theirs, initial in zip(ours.parameters(), reference.parameters(), start, strict=True):
        assert mine.dtype == torch.float32  # the distance travelled agrees to within 2%
        assert float((mine - theirs).detach().norm()) < 0.02 * float((theirs - initial).detach().norm())


def test_first_step_equals_torch_adamw():
    """At step 1 the moments are g and g² rounded, and the update uses the fp32 values before rounding."""
    settings = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1}
    reference, inputs, targets = regression_problem(1)
    ours, _, _ = regression_problem(1)
    train(reference, torch.optim.AdamW(reference.parameters(), **settings), inputs, targets, 1)
    train(ours, AdamWBF16State(ours.parameters(), **settings), inputs, targets, 1)
    for mine, theirs in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-7, rtol=1e-6)


def test_a_reloaded_state_continues_exactly(tmp_path):
    settings = {"lr": 1e-2, "seed": 5}
    straight, inputs, targets = regression_problem()
    train(straight, AdamWBF16State(straight.parameters(), **settings), inputs, targets, 7)

    resumed, _, _ = regression_problem()
    first = AdamWBF16State(resumed.parameters(), **settings)
    train(resumed, first, inputs, targets, 4)
    torch.save(first.state_dict(), tmp_path / "optimizer.pt")
    second = AdamWBF16State(resumed.parameters(), **settings)
    second.load_state_dict(torch.load(tmp_path / "optimizer.pt"))
    assert all(s["exp_avg"].dtype == torch.bfloat16 for s in second.state.values())
    train(resumed, second, inputs, targets, 3)
    for mine, theirs in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.equal(mine, theirs)


def test_build_optimizer_follows_the_config():
    model, _, _ = regression_problem()
    parameters = list(model.parameters())
    assert type(build_optimizer(parameters, OptimConfig())) is torch.optim.AdamW
    optimizer = build_optimizer(parameters, OptimConfig(state_dtype="bfloat16", lr=3e-4, weight_decay=0.1), seed=2)
    assert isinstance(optimizer, AdamWBF16State) and optimizer.seed == 2
    assert optimizer.param_groups[0]["lr"] == 3e-4 and optimizer.param_groups[0]["weight_decay"] == 0.1
