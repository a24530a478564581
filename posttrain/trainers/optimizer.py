"""The optimizer of every trainer: AdamW, with its two moment estimates in fp32 (exact, the default) or in
bfloat16 with stochastic rounding (half the optimizer memory).

AdamW (Loshchilov & Hutter, arXiv 1711.05101), per parameter θ with gradient g at step t::

    θ ← θ · (1 − lr·λ)
    m ← β1·m + (1 − β1)·g             v ← β2·v + (1 − β2)·g²
    θ ← θ − lr · (m / (1 − β1^t)) / (√(v / (1 − β2^t)) + ε)

``optim.state_dtype: float32`` is ``torch.optim.AdamW``. ``bfloat16`` stores m and v in bf16 and does the
arithmetic above in fp32. Rounding to nearest would stall v: with β2 = 0.999 the per-step change of v is
about 0.1% of v, under half a bf16 ulp (0.2%), so the decay and small increments would be rounded away.
The moments are therefore rounded stochastically (up with probability equal to the distance to the lower
bf16 neighbour, in units of the gap), which is unbiased: E[round(x)] = x. The noise comes from a generator
seeded with (seed, step), so a resumed run draws the same noise and continues exactly. Weights stay fp32.
For 135M parameters this saves 540 MB (2 × 2 bytes per parameter) at the price of a slower step.
"""

from __future__ import annotations

import math

import torch

from posttrain.config import OptimConfig

CHUNK = 1 << 22  # elements updated at once: the fp32 temporaries stay at a few × 16 MB


def build_optimizer(parameters: list[torch.nn.Parameter], optim: OptimConfig, seed: int = 0) -> torch.optim.Optimizer:
    """AdamW over ``parameters`` with the run's lr, betas, eps, weight decay and moment precision."""
    settings = {"lr": optim.lr, "betas": optim.betas, "eps": optim.eps, "weight_decay": optim.weight_decay}
    if optim.state_dtype == "float32":
        return torch.optim.AdamW(parameters, **settings)
    return AdamWBF16State(parameters, seed=seed, **settings)


def round_bits_stochastic_(values: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """In place: add ``noise`` (uniform integers in [0, 2^16)) to the fp32 bit patterns of ``values`` and cut the
    low 16 bits, leaving bf16-representable fp32. The magnitude rounds up with probability
    (|x| − ⌊|x|⌋) / gap, so E[round(x)] = x."""
    bits = values.view(torch.int32)
    return bits.add_(noise).bitwise_and_(-65536).view(torch.float32)


class AdamWBF16State(torch.optim.Optimizer):
    """AdamW (see the module docstring) with m and v stored in bf16 and rounded stochastically."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, seed: int = 0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.seed = seed

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        noise: tuple[torch.Tensor, torch.Tensor, torch.Generator] | None = None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                state = self.state[parameter]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(parameter, dtype=torch.bfloat16)
                    state["exp_avg_sq"] = torch.zeros_like(parameter, dtype=torch.bfloat16)
                state["step"] += 1
                step = int(state["step"])
                if noise is None:  # one draw per optimizer step, the same after a resume
                    noise = self._step_noise(self.seed * 1_000_003 + step, parameter.device, self._longest_chunk())
                self._update(parameter, state, group, beta1, beta2, step, noise)
        return loss

    def _longest_chunk(self) -> int:
        return min(CHUNK, max(p.numel() for group in self.param_groups for p in group["params"]))

    @staticmethod
    def _step_noise(step_seed: int, device: torch.device, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
        """Rounding noise for one step: 16-bit integers for m and for v, in buffers twice the longest chunk.

        Each chunk reads them at an offset drawn from the generator. Drawing fresh noise for every element of
        135M would cost more than the AdamW arithmetic; reused at random offsets, each element's rounding is
        still unbiased (its noise is uniform), and only roundings in different chunks are correlated.
        """
        generator = torch.Generator(device=device)
        generator.manual_seed(step_seed)
        bits = torch.randint(-(1 << 31), (1 << 31) - 1, (2 * chunk,), dtype=torch.int32, generator=generator,
                             device=device)
        return bits & 0xFFFF, (bits >> 16) & 0xFFFF, generator

    @staticmethod
    def _update(parameter, state, group, beta1: float, beta2: float, step: int, noise) -> None:
        lr, eps = group["lr"], group["eps"]
        low, high, generator = noise
        step_size = lr / (1 - beta1**step)
        root_correction = math.sqrt(1 - beta2**step)
        weights, grads = parameter.view(-1), parameter.grad.view(-1)
        exp_avg, exp_avg_sq = state["exp_avg"].view(-1), state["exp_avg_sq"].view(-1)
        for start in range(0, weights.numel(), CHUNK):
            part = slice(start, start + CHUNK)
            grad = grads[part].float()
            m = exp_avg[part].float().lerp_(grad, 1 - beta1)
            v = exp_avg_sq[part].float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            if group["weight_decay"]:
                weights[part].mul_(1 - lr * group["weight_decay"])
            weights[part].addcdiv_(m, v.sqrt().div_(root_correction).add_(eps), value=-step_size)
            size = m.numel()
            offset = int(torch.randint(0, low.numel() - size + 1, (1,), generator=generator))
            exp_avg[part] = round_bits_stochastic_(m, low[offset : offset + size])
            exp_avg_sq[part] = round_bits_stochastic_(v, high[offset : offset + size])

    def load_state_dict(self, state_dict: dict) -> None:
        """``torch.optim.Optimizer`` casts floating-point state to the parameter's dtype on load; cast the moments
        back to bf16 (lossless: they were saved as bf16)."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key] = state[key].to(torch.bfloat16)
