"""The optimizer of every trainer: AdamW, with its two moment estimates in fp32 (exact, the default) or in
bfloat16 with stochastic rounding (half the optimizer memory), stepped after backward or inside it.

AdamW (Loshchilov & Hutter, arXiv 1711.05101), per parameter θ with gradient g at step t::

    θ ← θ · (1 − lr·λ)
    m ← β1·m + (1 − β1)·g             v ← β2·v + (1 − β2)·g²
    θ ← θ − lr · (m / (1 − β1^t)) / (√(v / (1 − β2^t)) + ε)

One function, :func:`adamw_update_`, applies this to one parameter; every posttrain optimizer calls it.

``optim.state_dtype: float32`` is ``torch.optim.AdamW`` (the same operations as :func:`adamw_update_` on fp32
moments). ``bfloat16`` stores m and v in bf16 and does the arithmetic above in fp32. Rounding to nearest
would stall v: with β2 = 0.999 the per-step change of v is about 0.1% of v, under half a bf16 ulp (0.2%), so
the decay and small increments would be rounded away. The moments are therefore rounded stochastically (up
with probability equal to the distance to the lower bf16 neighbour, in units of the gap), which is unbiased:
E[round(x)] = x. The noise of step t is drawn from a generator seeded with (seed, t), and each chunk of each
parameter reads it at an offset hashed from (seed, t, parameter index, chunk start): a resumed run draws the
same noise, and the result does not depend on the order in which parameters are updated (after backward, or
inside it as their gradients become ready). Weights stay fp32. For 135M parameters bf16 moments save 540 MB
(2 × 2 bytes per parameter) at the price of a slower step.

``optim.update_in_backward: true`` (:class:`AdamWInBackward`) applies each parameter's update inside the last
backward of an optimizer update, as soon as its gradient is accumulated, and frees that gradient: the whole
set of gradients never exists at once in that backward (as torchtune's ``optimizer_in_bwd``).
"""

from __future__ import annotations

import math

import torch

from posttrain.config import OptimConfig
from posttrain.errors import ConfigError

CHUNK = 1 << 20  # elements of a bf16-moment update done at once: the fp32 temporaries stay at a few × 4 MB
MASK64 = (1 << 64) - 1


def build_optimizer(parameters: list[torch.nn.Parameter], optim: OptimConfig, seed: int = 0,
                    world_size: int = 1) -> torch.optim.Optimizer:
    """AdamW over ``parameters`` with the run's lr, betas, eps, weight decay, moment precision and update timing."""
    settings = {"lr": optim.lr, "betas": optim.betas, "eps": optim.eps, "weight_decay": optim.weight_decay}
    if optim.update_in_backward:
        if world_size > 1:
            raise ConfigError(
                f"optim.update_in_backward (on with train.memory=lean) cannot run on {world_size} processes: "
                "gradients are averaged across processes after backward, and an update inside backward would use "
                "this process's gradient alone",
                fix="set optim.update_in_backward=false (the other lean settings stay on), or train on one process")
        return AdamWInBackward(parameters, state_dtype=optim.state_dtype, seed=seed, **settings)
    if optim.state_dtype == "float32":
        return torch.optim.AdamW(parameters, **settings)
    return AdamWBF16State(parameters, seed=seed, **settings)


def round_bits_stochastic_(values: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """In place: add ``noise`` (uniform integers in [0, 2^16)) to the fp32 bit patterns of ``values`` and cut the
    low 16 bits, leaving bf16-representable fp32. The magnitude rounds up with probability
    (|x| − ⌊|x|⌋) / gap, so E[round(x)] = x."""
    bits = values.view(torch.int32)
    return bits.add_(noise).bitwise_and_(-65536).view(torch.float32)


def mix64(*values: int) -> int:
    """A 64-bit hash of integers (splitmix64's finalizer applied after each): where a chunk reads its noise."""
    state = 0
    for value in values:
        state = (state ^ (value & MASK64)) * 0x9E3779B97F4A7C15 & MASK64
        state = (state ^ (state >> 30)) * 0xBF58476D1CE4E5B9 & MASK64
        state = (state ^ (state >> 27)) * 0x94D049BB133111EB & MASK64
        state ^= state >> 31
    return state


class RoundingNoise:
    """The stochastic-rounding noise of one optimizer step: 32 random bits per element of a buffer twice the
    longest chunk, drawn from a generator seeded with ``step_seed``; the low 16 bits round m, the high 16 bits v.

    Each chunk reads the buffer at an offset hashed from (``step_seed``, parameter index, chunk start). Drawing
    fresh noise for every element of 135M would cost more than the AdamW arithmetic; reused at different
    offsets, each element's rounding is still unbiased (its noise is uniform), and only roundings in different
    chunks are correlated.
    """

    def __init__(self, step_seed: int, device: torch.device, chunk: int):
        generator = torch.Generator(device=device)
        generator.manual_seed(step_seed)
        self.step_seed = step_seed
        self.bits = torch.randint(-(1 << 31), (1 << 31) - 1, (2 * chunk,), dtype=torch.int32, generator=generator,
                                  device=device)

    def for_chunk(self, index: int, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The noise for m and for v of the ``size`` elements from ``start`` of parameter ``index``."""
        offset = mix64(self.step_seed, index, start) % (self.bits.numel() - size + 1)
        bits = self.bits[offset : offset + size]
        return bits & 0xFFFF, (bits >> 16) & 0xFFFF


@torch.no_grad()
def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a sharded tensor (a DTensor under FSDP); the tensor itself otherwise."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def adamw_update_(weights: torch.Tensor, grad: torch.Tensor, state: dict, group: dict,
                  noise: RoundingNoise | None = None, index: int = 0) -> None:
    """One AdamW step (the module docstring's formula) of one parameter, in place on ``weights`` and ``state``.

    ``state`` holds ``step`` (a float32 scalar tensor, incremented here), ``exp_avg`` (m) and ``exp_avg_sq`` (v);
    ``group`` the ``lr``, ``betas``, ``eps`` and ``weight_decay``. With fp32 moments the operations are those of
    ``torch.optim.AdamW``'s single-tensor path. With bf16 moments the update runs in chunks of :data:`CHUNK`
    elements: m and v are computed in fp32, the weights updated with them, then m and v are stored rounded
    stochastically with ``noise`` (the step's :class:`RoundingNoise`; ``index`` is the parameter's index).
    """
    beta1, beta2 = group["betas"]
    lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
    # an FSDP shard (DTensor) is updated through its local part: the update is elementwise
    weights, grad = _local(weights), _local(grad)
    state["step"] += 1
    step = float(state["step"])
    step_size = lr / (1 - beta1**step)
    root_correction = (1 - beta2**step) ** 0.5
    exp_avg, exp_avg_sq = _local(state["exp_avg"]), _local(state["exp_avg_sq"])
    if exp_avg.dtype == torch.float32:
        if weight_decay:
            weights.mul_(1 - lr * weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        weights.addcdiv_(exp_avg, (exp_avg_sq.sqrt() / root_correction).add_(eps), value=-step_size)
        return
    if noise is None:
        raise ValueError("bf16 moments need the step's rounding noise")
    flat_weights, flat_grads, flat_m, flat_v = (t.view(-1) for t in (weights, grad, exp_avg, exp_avg_sq))
    for start in range(0, flat_weights.numel(), CHUNK):
        part = slice(start, start + CHUNK)
        chunk_grad = flat_grads[part].float()
        m = flat_m[part].float().lerp_(chunk_grad, 1 - beta1)
        v = flat_v[part].float().mul_(beta2).addcmul_(chunk_grad, chunk_grad, value=1 - beta2)
        if weight_decay:
            flat_weights[part].mul_(1 - lr * weight_decay)
        flat_weights[part].addcdiv_(m, v.sqrt().div_(root_correction).add_(eps), value=-step_size)
        low, high = noise.for_chunk(index, start, m.numel())
        flat_m[part] = round_bits_stochastic_(m, low)
        flat_v[part] = round_bits_stochastic_(v, high)


class PerParameterAdamW(torch.optim.Optimizer):
    """AdamW whose every parameter is updated by :func:`adamw_update_`, with moments in ``state_dtype``.

    Its state has the layout of ``torch.optim.AdamW``'s (``step``, ``exp_avg``, ``exp_avg_sq`` per parameter).
    ``seed`` seeds the rounding noise of bf16 moments.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, seed: int = 0, state_dtype: str = "float32"):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        if state_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"state_dtype must be float32 or bfloat16, got {state_dtype!r}")
        self.seed = seed
        self.state_dtype = getattr(torch, state_dtype)
        self.place = {parameter: (group_index, index) for index, (group_index, parameter) in enumerate(
            (g, p) for g, group in enumerate(self.param_groups) for p in group["params"])}
        self.chunk = min(CHUNK, max(p.numel() for p in self.place))
        self.noise: RoundingNoise | None = None

    def update_parameter(self, parameter: torch.Tensor) -> None:
        """Apply the AdamW step to ``parameter`` with its ``.grad``."""
        group_index, index = self.place[parameter]
        state = self.state[parameter]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(parameter, dtype=self.state_dtype, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(parameter, dtype=self.state_dtype,
                                                   memory_format=torch.preserve_format)
        noise = None
        if self.state_dtype == torch.bfloat16:
            step_seed = self.seed * 1_000_003 + int(state["step"]) + 1
            if self.noise is None or self.noise.step_seed != step_seed:  # one draw per optimizer step
                self.noise = RoundingNoise(step_seed, parameter.device, self.chunk)
            noise = self.noise
        adamw_update_(parameter, parameter.grad, state, self.param_groups[group_index], noise, index)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    self.update_parameter(parameter)
        self.noise = None
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """``torch.optim.Optimizer`` casts floating-point state to the parameter's dtype on load; cast the moments
        back to ``state_dtype`` (lossless: they were saved in it)."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key] = state[key].to(self.state_dtype)


class AdamWBF16State(PerParameterAdamW):
    """AdamW (see the module docstring) with m and v stored in bf16 and rounded stochastically, stepped after
    backward."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, seed: int = 0):
        super().__init__(params, lr, betas, eps, weight_decay, seed, state_dtype="bfloat16")


class AdamWInBackward(PerParameterAdamW):
    """AdamW applied inside backward: each parameter's update runs in a post-accumulate-grad hook as soon as its
    gradient is complete, and the gradient is freed (``p.grad = None``), so the gradients of the whole model
    never exist at once in that backward. The update is the same :func:`adamw_update_` as after backward.

    Use per optimizer update: earlier backwards (micro-batches) only accumulate ``.grad`` as usual; call
    :meth:`arm` just before the last one, then :meth:`finish`, which applies the update of any parameter that
    got a gradient only in earlier backwards and returns the gradient norm and whether every update was applied.
    :meth:`step` applies only the updates not yet applied (none after an armed backward): the LR scheduler,
    ``state_dict``/``load_state_dict`` and checkpoints work as for any ``torch.optim.Optimizer``.

    The gradient norm ``‖g‖ = √Σ_p ‖g_p‖²`` is accumulated in the hooks, so it is known only after every update:
    global-norm clipping is impossible (the config refuses it). Non-finite values: ``arm(False)`` (a non-finite
    loss) applies no update in that backward; a parameter whose own gradient is non-finite keeps its value and
    state and is counted, and :meth:`finish` then reports the update as not applied. Unlike the update after
    backward, a non-finite gradient in one parameter cannot stop the updates of the other parameters already
    applied earlier in that backward: they keep them.
    """

    updates_in_backward = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, seed: int = 0, state_dtype: str = "float32"):
        super().__init__(params, lr, betas, eps, weight_decay, seed, state_dtype)
        self.armed: bool | None = None  # None: no armed backward in this update; False: a non-finite loss
        self.squared_norm = 0.0
        self.nonfinite = 0
        self.hooks = [parameter.register_post_accumulate_grad_hook(self._on_gradient) for parameter in self.place]

    def arm(self, finite_loss: bool = True) -> None:
        """The next backward is the last of this optimizer update: update each parameter when its gradient is
        complete; with ``finite_loss`` False, apply nothing (the gradients are left to be discarded)."""
        self.armed, self.squared_norm, self.nonfinite = finite_loss, 0.0, 0

    def _on_gradient(self, parameter: torch.Tensor) -> None:
        if self.armed:
            self._apply(parameter)

    @torch.no_grad()
    def _apply(self, parameter: torch.Tensor) -> None:
        squared = float(torch.linalg.vector_norm(parameter.grad, dtype=torch.float32)) ** 2
        self.squared_norm += squared
        if math.isfinite(squared):
            self.update_parameter(parameter)
        else:
            self.nonfinite += 1
        parameter.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        """Apply the armed update to the parameters whose gradients the hooks have not consumed (those used only
        in earlier backwards); a no-op for the updates already applied and when not armed."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.armed:
            for parameter in self.place:
                if parameter.grad is not None:
                    self._apply(parameter)
        return loss

    def finish(self) -> tuple[float, bool]:
        """End the optimizer update: ``(‖g‖, applied)``, ``applied`` False when the backward was disarmed (a
        non-finite loss) or any parameter's gradient was non-finite. Call ``zero_grad`` afterwards."""
        self.step()
        armed, self.armed, self.noise = self.armed, None, None
        if armed is None:  # no armed backward (an update without micro-batches): nothing to apply
            return 0.0, True
        if not armed:
            grads = [p.grad for p in self.place if p.grad is not None]
            return float(torch.nn.utils.get_total_norm(grads)) if grads else math.nan, False
        return math.sqrt(self.squared_norm), self.nonfinite == 0

    def remove_hooks(self) -> None:
        """Detach the optimizer from the parameters (their later backwards only accumulate gradients)."""
        for handle in self.hooks:
            handle.remove()
        self.hooks = []
