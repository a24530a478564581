"""The mixed-precision policy of a run (``train.precision``): autocast, loss scaling, and what they refuse.

The weights, their gradients and the optimizer state stay in the dtype the model was loaded in (``model.dtype``;
float32 unless the recipe asks otherwise: the *master weights*). Autocast runs the matrix products of each
forward pass in a half-precision dtype and keeps reductions such as softmax and the loss in float32; the
backward pass follows the forward's dtypes, and every gradient lands on its float32 weight.

==========  ===================================================================================================
``fp32``    no autocast: everything in the weights' dtype.
``bf16``    ``torch.autocast(device, bfloat16)``. bfloat16 has float32's exponent range, so gradients neither
            overflow nor underflow more than in float32 and need no scaling.
``fp16``    ``torch.autocast(device, float16)`` with a dynamic loss scale ``S`` (``torch.amp.GradScaler``):
            float16 keeps only 5 exponent bits (largest 65504, smallest normal 6.1e-5), so small gradients
            underflow to zero. Backward runs on ``S · loss``, the gradients are divided by ``S`` before their
            norm is taken and clipped, and an update whose scaled gradients hold an inf or NaN is an *overflow*:
            it is skipped (weights and optimizer state untouched) and ``S`` halves; after 2000 updates in a row
            without one, ``S`` doubles. ``S`` starts at 2^16.
``auto``    ``bf16`` on CUDA when the weights are float32, ``fp32`` otherwise (CPU; weights already in half
            precision run in their own dtype).
==========  ===================================================================================================

Refused: ``bf16``/``fp16`` autocast over trainable weights that are not float32 — the update would be rounded
to the weights' 8 or 11 significant bits (most small updates vanish) and fp16 loss scaling needs float32
gradients to unscale into. Both autocast dtypes work on CUDA and, in the torch versions this project supports,
on CPU (slower there than float32: for tests and checks).

How it composes with the loop's non-finite handling (:mod:`posttrain.trainers.loop`): a step whose loss is
finite on every process but whose fp16 gradients overflowed is the scaler's business — skipped, logged
(``loss_scale``, ``overflow_updates``) and **not** counted toward ``train.max_nonfinite_steps``. An overflow at a
scale of 1 or less cannot be cured by scaling (the unscaled gradients themselves are not finite in float16), and
a non-finite loss never can; both count as divergence like any other non-finite step. The scaler's state goes
into every checkpoint (plain numbers, ``loss_scaler.pt``), so a resumed fp16 run continues with the same scale.
"""

from __future__ import annotations

import contextlib

import torch

from posttrain.errors import ConfigError

MODES = ("auto", "fp32", "bf16", "fp16")
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve(mode: str, device_type: str, weights_dtype: torch.dtype) -> str:
    """The concrete mode (``fp32``, ``bf16`` or ``fp16``) that ``mode`` means for weights of this dtype on this
    device: ``auto`` is ``bf16`` on CUDA over float32 weights and ``fp32`` everywhere else."""
    if mode == "auto":
        return "bf16" if device_type == "cuda" and weights_dtype == torch.float32 else "fp32"
    return mode


def autocast(model: torch.nn.Module, mode: str):
    """The autocast context for a forward pass of ``model`` under the run's ``train.precision``.

    For the passes outside the training step (reference, old-policy and teacher log-probs) that must be computed
    at the precision of the loss forward. A model whose weights are not float32 (a frozen reference loaded in
    half precision) runs in its own dtype."""
    parameter = next(model.parameters())
    resolved = resolve(mode, parameter.device.type, parameter.dtype)
    if resolved == "fp32" or parameter.dtype != torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(parameter.device.type, dtype=HALF_DTYPES[resolved])


class Precision:
    """The precision policy of one trained model: its autocast, and for ``fp16`` the loss scaler.

    Per optimizer update the loop calls :meth:`autocast` around each forward, :meth:`backward` on each micro-batch
    loss, :meth:`unscale` once after the gradients are complete (combined over processes) and before their norm,
    and :meth:`update` once the update was applied or skipped."""

    def __init__(self, mode: str, model: torch.nn.Module):
        if mode not in MODES:
            raise ConfigError(f"unknown train.precision {mode!r}", where="train.precision",
                              fix=f"use one of: {', '.join(MODES)}")
        self.model = model
        trainable = [p for p in model.parameters() if p.requires_grad] or list(model.parameters())
        self.device_type = trainable[0].device.type
        half = sorted({str(p.dtype).removeprefix("torch.") for p in trainable if p.dtype != torch.float32})
        if mode in HALF_DTYPES and half:
            raise ConfigError(
                f"train.precision={mode} autocasts float32 master weights to {mode}, but the trained weights are "
                f"already {', '.join(half)}: updates would be rounded away and fp16 gradients could not be unscaled",
                where="train.precision",
                fix=f"keep the weights in float32 (model.dtype=auto or float32) with train.precision={mode}, or train "
                    "the half-precision weights as they are (train.precision=auto)")
        self.mode = resolve(mode, self.device_type, trainable[0].dtype)
        self.scaler = torch.amp.GradScaler(self.device_type) if self.mode == "fp16" else None
        self._scale_before: float | None = None  # the scale of the update in progress (fp16), set by unscale

    def autocast(self):
        """The context for the training forward passes: autocast to bf16/fp16, or nothing for fp32."""
        return autocast(self.model, self.mode)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, on ``S · loss`` under fp16 loss scaling."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the (complete, process-combined) gradients by the loss scale, in place, so the norm and clipping
        see true gradients; a no-op without loss scaling or when no parameter received a gradient."""
        if self.scaler is None or not any(p.grad is not None for group in optimizer.param_groups
                                          for p in group["params"]):
            self._scale_before = None
            return
        self._scale_before = self.scaler.get_scale()
        self.scaler.unscale_(optimizer)

    def update(self, loss_finite: bool) -> bool:
        """Adjust the loss scale after an update (applied or skipped); whether this update was an overflow the
        scaler absorbs, i.e. a skip that must not count as divergence: the loss was finite (on every process), the
        scaled gradients were not, and the scale they overflowed at was above 1."""
        if self._scale_before is None:
            return False
        scale, self._scale_before = self._scale_before, None
        self.scaler.update()  # halves the scale when unscale found an inf/NaN gradient, else counts toward growth
        overflowed = self.scaler.get_scale() < scale
        return overflowed and loss_finite and scale > 1.0

    def metrics(self) -> dict[str, float]:
        """``loss_scale`` under fp16 loss scaling (the scale the next update runs at); nothing otherwise."""
        return {"loss_scale": self.scaler.get_scale()} if self.scaler is not None else {}

    def state_dict(self) -> dict:
        """The loss scaler's state (plain numbers; empty without loss scaling)."""
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None:
            self.scaler.load_state_dict(state)
