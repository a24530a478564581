"""Mixed precision (``train.precision``): autocast over float32 master weights, fp16 loss scaling, what is refused.

CPU autocast runs both bf16 and fp16 in torch, so everything but the speed is tested here; the tests marked
``cuda`` repeat the essential ones on a GPU (``benchmarks/device_check.sh``)."""

import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from posttrain.errors import ConfigError
from posttrain.models import load_model
from posttrain.trainers import checkpoint as ckpt
from posttrain.trainers.precision import Precision, autocast
from posttrain.trainers.resume import config_changes
from posttrain.trainers.run import train
from tests.helpers import read_jsonl, tiny_config, train_steps

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tiny_model(device: str = "cpu", dtype: str = "float32"):
    torch.manual_seed(0)
    return load_model("tiny-random", dtype=dtype, device=device)


def loss_of(model, mode: str) -> torch.Tensor:
    """A next-token loss of the tiny model on fixed tokens, under the autocast of ``train.precision=mode``."""
    ids = torch.arange(2 * 12, device=next(model.parameters()).device).view(2, 12) % 50 + 3
    with autocast(model, mode):
        logits = model(input_ids=ids).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten())


def scaler_options(monkeypatch, **options):
    """Every :class:`Precision` built in this test gets a loss scaler with these ``GradScaler`` options."""
    original = Precision.__init__

    def init(self, mode, model):
        original(self, mode, model)
        if self.scaler is not None:
            self.scaler = torch.amp.GradScaler(self.device_type, **options)

    monkeypatch.setattr(Precision, "__init__", init)


# -- the policy ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, expected", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_computes_in_half_precision_and_keeps_float32_weights_and_gradients(mode, expected):
    model = tiny_model()
    precision = Precision(mode, model)
    with precision.autocast():
        logits = model(input_ids=torch.tensor([[3, 4, 5]])).logits
    assert logits.dtype == expected  # the matrix products ran in the half dtype
    precision.backward(loss_of(model, precision.mode))
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())


def test_auto_is_fp32_on_cpu_and_fp32_never_autocasts():
    model = tiny_model()
    for mode in ("auto", "fp32"):
        precision = Precision(mode, model)
        assert precision.mode == "fp32" and precision.scaler is None and precision.metrics() == {}
        with precision.autocast():
            assert model(input_ids=torch.tensor([[3, 4]])).logits.dtype == torch.float32
    with autocast(model, "auto"):  # the forward-only passes (reference, old policy) follow the same rule
        assert model(input_ids=torch.tensor([[3, 4]])).logits.dtype == torch.float32
    with autocast(model, "bf16"):
        assert model(input_ids=torch.tensor([[3, 4]])).logits.dtype == torch.bfloat16


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
@pytest.mark.parametrize("weights", ["bfloat16", "float16"])
def test_autocast_over_half_precision_weights_is_refused(mode, weights):
    with pytest.raises(ConfigError, match=f"already {weights}") as raised:
        Precision(mode, tiny_model(dtype=weights))
    assert raised.value.where == "train.precision" and "model.dtype" in raised.value.fix


def test_a_run_with_half_weights_and_autocast_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="train.precision=fp16 autocasts float32 master weights"):
        train(tiny_config(tmp_path, "half", **{"model.dtype": "bfloat16", "train.precision": "fp16"}))
    assert not (tmp_path / "half" / "metrics.jsonl").exists()


def test_half_precision_weights_still_train_as_they_are_under_auto():
    assert Precision("auto", tiny_model(dtype="bfloat16")).mode == "fp32"  # no autocast: the weights' own dtype


# -- bf16 -----------------------------------------------------------------------------------------------------------


def test_bf16_autocast_learns_close_to_fp32_with_float32_weights(tmp_path):
    fp32 = train_steps(train(tiny_config(tmp_path, "fp32", **{"train.precision": "fp32"})).run_dir)
    run = train(tiny_config(tmp_path, "bf16", **{"train.precision": "bf16"}))
    bf16 = train_steps(run.run_dir)
    # step 1's loss is a forward of the same weights: bfloat16 rounds each matrix product's inputs to 8
    # significant bits (relative error <= 2^-9 = 0.2%); the loss (log-softmax in float32) averages these errors
    # over tokens, so it stays well inside 0.5% of float32's. A loss computed at the wrong scale or in a broken
    # precision would be off by far more.
    assert bf16[1]["loss"] == pytest.approx(fp32[1]["loss"], rel=5e-3)
    assert bf16[6]["loss"] < bf16[1]["loss"] - 0.3  # it learns (fp32 drops by ~0.5 over these 6 steps)
    assert all(step["skipped_updates"] == 0 for step in bf16.values())
    weights = load_file(ckpt.list_checkpoints(run.run_dir)[-1] / "model" / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}  # master weights stay float32


# -- fp16 loss scaling ----------------------------------------------------------------------------------------------


def test_fp16_gradients_are_unscaled_before_their_norm():
    model = tiny_model()
    loss_of(model, "fp32").backward()
    expected = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    precision = Precision("fp16", model)
    optimizer = torch.optim.AdamW(model.parameters())
    precision.load_state_dict({**precision.state_dict(), "scale": 256.0})
    precision.backward(loss_of(model, precision.mode))
    scaled = torch.cat([p.grad.flatten() for p in model.parameters()])
    precision.unscale(optimizer)
    unscaled = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.equal(unscaled, scaled / 256)  # division by a power of two: exact
    # float16 products carry 11 significant bits (relative rounding 2^-11 ~ 5e-4 each): the gradient as a whole
    # stays within 1% of float32's, while a missing or doubled unscale would be off by a factor of 256 or more
    assert float((unscaled - expected).norm() / expected.norm()) < 1e-2


def test_an_fp16_overflow_is_skipped_lowers_the_scale_and_is_not_divergence():
    model = tiny_model()
    precision = Precision("fp16", model)
    optimizer = torch.optim.AdamW(model.parameters())
    precision.load_state_dict({**precision.state_dict(), "scale": 2.0**120})  # S * gradients overflow float16
    precision.backward(loss_of(model, precision.mode))
    precision.unscale(optimizer)
    assert not math.isfinite(float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])))
    assert precision.update(loss_finite=True) is True  # the scaler's overflow: not counted as divergence
    assert precision.metrics() == {"loss_scale": 2.0**119}
    # an overflow at a scale <= 1 is not cured by scaling; with a non-finite loss neither: both are divergence
    for scale, loss_finite in ((1.0, True), (4.0, False)):
        model.zero_grad(set_to_none=True)
        precision.load_state_dict({**precision.state_dict(), "scale": scale})
        hook = model.lm_head.weight.register_hook(lambda grad: grad * float("inf"))
        precision.backward(loss_of(model, precision.mode))
        hook.remove()
        precision.unscale(optimizer)
        assert precision.update(loss_finite=loss_finite) is False
        assert precision.metrics()["loss_scale"] == scale / 2


def test_fp16_run_skips_overflows_without_touching_weights_or_stopping(tmp_path, monkeypatch):
    scaler_options(monkeypatch, init_scale=2.0**120)  # every update of this short run overflows
    run = train(tiny_config(tmp_path, "overflow", **{"train.precision": "fp16", "train.max_steps": 3,
                                                       "train.max_nonfinite_steps": 1}))
    steps = train_steps(run.run_dir)
    assert [steps[s]["loss_scale"] for s in (1, 2, 3)] == [2.0**119, 2.0**118, 2.0**117]
    assert all(steps[s]["skipped_updates"] == 1 and steps[s]["overflow_updates"] == 1 for s in (1, 2, 3))
    assert all(math.isfinite(steps[s]["loss"]) for s in (1, 2, 3))
    saved = load_file(ckpt.list_checkpoints(run.run_dir)[-1] / "model" / "model.safetensors")
    initial = tiny_model().state_dict()
    assert all(torch.equal(weight, initial[name]) for name, weight in saved.items())


def test_fp16_learns_and_its_loss_scale_resumes_exactly(tmp_path, monkeypatch):
    scaler_options(monkeypatch, init_scale=2.0**8, growth_interval=1)  # the scale doubles after every update
    config = tiny_config(tmp_path, "fp16", **{"train.precision": "fp16", "train.save_every": 3})
    run_dir = train(config).run_dir
    whole = train_steps(run_dir)
    assert [whole[s]["loss_scale"] for s in range(1, 7)] == [2.0**k for k in range(9, 15)]
    assert whole[6]["loss"] < whole[1]["loss"] - 0.3 and all(s["skipped_updates"] == 0 for s in whole.values())
    state = torch.load(ckpt.list_checkpoints(run_dir)[0] / ckpt.LOSS_SCALER_FILE, weights_only=True)
    assert state["scale"] == 2.0**11 and state["growth_interval"] == 1
    shutil.rmtree(ckpt.list_checkpoints(run_dir)[-1])  # as if the run had been killed after step 3's checkpoint
    train(config)
    again = [record for record in read_jsonl(run_dir / "metrics.jsonl") if "loss" in record][-3:]
    for record in again:  # a scale restarted at 2^8 would show here
        assert record["loss_scale"] == whole[record["step"]]["loss_scale"]
        assert record["loss"] == pytest.approx(whole[record["step"]]["loss"], rel=1e-6)
    assert [record["step"] for record in again] == [4, 5, 6]


def test_a_changed_precision_is_refused_on_resume_and_older_checkpoints_count_as_auto(tmp_path):
    train(tiny_config(tmp_path, "p", **{"train.max_steps": 2}))
    with pytest.raises(ConfigError, match="train.precision: 'auto' -> 'bf16'"):
        train(tiny_config(tmp_path, "p", **{"train.max_steps": 3, "train.precision": "bf16"}))
    assert config_changes({"train": {"lr": 1}}, {"train": {"lr": 1, "precision": "auto"}}) == {}


# -- on a GPU (benchmarks/device_check.sh runs these) ---------------------------------------------------------------


@pytest.mark.cuda
@cuda
def test_cuda_auto_is_bf16_autocast_and_an_sft_run_learns(tmp_path):
    assert Precision("auto", tiny_model("cuda")).mode == "bf16"
    fp32 = train_steps(train(tiny_config(tmp_path, "fp32", **{"model.device": "cuda",
                                                              "train.precision": "fp32"})).run_dir)
    run = train(tiny_config(tmp_path, "auto", **{"model.device": "cuda"}))
    steps = train_steps(run.run_dir)
    assert steps[1]["loss"] == pytest.approx(fp32[1]["loss"], rel=5e-3)  # tolerance: see the CPU bf16 test
    assert steps[6]["loss"] < steps[1]["loss"] - 0.3 and all(s["skipped_updates"] == 0 for s in steps.values())
    weights = load_file(ckpt.list_checkpoints(run.run_dir)[-1] / "model" / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}


@pytest.mark.cuda
@cuda
def test_cuda_fp16_run_learns_with_a_loss_scale(tmp_path):
    steps = train_steps(train(tiny_config(tmp_path, "fp16", **{"model.device": "cuda",
                                                               "train.precision": "fp16"})).run_dir)
    assert steps[6]["loss"] < steps[1]["loss"] - 0.3
    assert all(s["skipped_updates"] == 0 and s["loss_scale"] == 2.0**16 for s in steps.values())


@pytest.mark.cuda
@cuda
def test_cuda_fp16_overflow_is_skipped_and_lowers_the_scale():
    model = tiny_model("cuda")
    precision = Precision("fp16", model)
    optimizer = torch.optim.AdamW(model.parameters())
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    precision.load_state_dict({**precision.state_dict(), "scale": 2.0**120})
    with autocast(model, "fp16"):
        assert model(input_ids=torch.tensor([[3, 4]], device="cuda")).logits.dtype == torch.float16
    precision.backward(loss_of(model, precision.mode))
    precision.unscale(optimizer)
    assert precision.update(loss_finite=True) is True and precision.metrics()["loss_scale"] == 2.0**119
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
