"""Preference and reward-model training: the DPO-family and KTO losses of ``method: dpo``
(``preference:``, with which kinds are reference-free or take label smoothing) and the scalar reward model of
``method: reward_model`` (``reward_model:``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from posttrain.config.sections import Section

PREFERENCE_REFERENCE_FREE = ("simpo", "orpo")
PREFERENCE_LABEL_SMOOTHING = ("sigmoid", "robust", "simpo")


class PreferenceConfig(Section):
    """Preference optimization (``method: dpo``, :mod:`posttrain.trainers.preference`); the losses are
    :func:`posttrain.ops.dpo_loss` on (chosen, rejected) pairs, and for ``kto``
    :func:`posttrain.ops.kto_loss` on unpaired records (``prompt``, ``completion``, ``label``). Defaults follow
    TRL 1.16 ``DPOConfig`` / ``KTOConfig`` / ``ORPOConfig``. ``simpo`` and ``orpo`` are reference-free: their
    ``reference`` defaults to ``none``."""

    kind: Literal["sigmoid", "robust", "ipo", "hinge", "simpo", "orpo", "kto"] = "sigmoid"
    beta: float = Field(0.1, gt=0, allow_inf_nan=False, description="β: scale of the implicit reward (for orpo: "
                        "λ, the weight of the odds-ratio term)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="ε: assumed label-flip rate (cDPO, robust "
                                   "DPO, SimPO); sigmoid, robust and simpo only")
    label_smoothing_field: str | None = Field(None, description="record field holding a per-pair ε in [0, 1] that "
                                              "replaces label_smoothing (CREAM: 1 − the consistency rate, written "
                                              "by the self_judge stage as `label_smoothing`); sigmoid and simpo only")
    gamma: float = Field(0.0, allow_inf_nan=False, description="SimPO's target reward margin γ; simpo only")
    rpo_alpha: float = Field(0.0, ge=0, allow_inf_nan=False, description="RPO: weight α of the NLL on the "
                             "chosen completions added to the loss (0 = off; orpo always adds it with weight 1)")
    desirable_weight: float = Field(1.0, gt=0, allow_inf_nan=False, description="KTO's λ_D: weight of the "
                                    "desirable (label true) completions; kto only")
    undesirable_weight: float = Field(1.0, gt=0, allow_inf_nan=False, description="KTO's λ_U: weight of the "
                                      "undesirable (label false) completions; kto only")
    reference: Literal["precompute", "none"] = Field("precompute", description="precompute: the starting "
                                                     "weights' log-probs of every pair, once, cached in the run "
                                                     "directory; none: reference-free (simpo, orpo only)")

    @model_validator(mode="before")
    @classmethod
    def _reference_free_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") in PREFERENCE_REFERENCE_FREE and "reference" not in data:
            return {**data, "reference": "none"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> PreferenceConfig:
        free = self.kind in PREFERENCE_REFERENCE_FREE
        if free and self.reference != "none":
            raise ValueError(f"kind {self.kind!r} is reference-free; set preference.reference=none")
        if not free and self.reference == "none":
            raise ValueError(f"kind {self.kind!r} needs reference log-probs; set preference.reference=precompute "
                             f"or use one of {', '.join(PREFERENCE_REFERENCE_FREE)}")
        if self.label_smoothing > 0 and self.kind not in PREFERENCE_LABEL_SMOOTHING:
            raise ValueError(f"kind {self.kind!r} has no label smoothing; set preference.label_smoothing=0 or use "
                             f"one of {', '.join(PREFERENCE_LABEL_SMOOTHING)}")
        if self.label_smoothing_field is not None and (self.kind not in ("sigmoid", "simpo") or self.label_smoothing):
            raise ValueError("label_smoothing_field gives each pair its own ε for kind sigmoid or simpo; use one of "
                             "those kinds and leave preference.label_smoothing at 0")
        if self.gamma != 0 and self.kind != "simpo":
            raise ValueError(f"gamma is SimPO's margin but kind is {self.kind!r}; set preference.gamma=0")
        if self.rpo_alpha and self.kind in ("orpo", "kto"):
            raise ValueError(f"rpo_alpha adds an NLL term to pairwise DPO losses, not to {self.kind!r}; set "
                             "preference.rpo_alpha=0 (orpo adds its own NLL term)")
        if (self.desirable_weight, self.undesirable_weight) != (1.0, 1.0) and self.kind != "kto":
            raise ValueError(f"desirable_weight and undesirable_weight are KTO's, but kind is {self.kind!r}; "
                             "leave them at 1.0 or use kind kto")
        return self


class RewardModelConfig(Section):
    """Scalar reward model (``method: reward_model``): a one-label sequence-classification head on the LM.
    ``bradley_terry``: preference pairs, loss :func:`posttrain.ops.bradley_terry_loss`, as TRL 1.16
    ``RewardTrainer``; ``regression``: ``text`` + ``label`` records, MSE (:func:`posttrain.ops.regression_loss`,
    the MetaRM of RM-NLHF)."""

    objective: Literal["bradley_terry", "regression"] = "bradley_terry"

    margin_field: str | None = Field(None, description="record field holding a per-pair margin m (Llama 2): "
                                     "loss −log σ(r_c − r_r − m)")
    center_coefficient: float | None = Field(None, ge=0, allow_inf_nan=False, description="weight of "
                                             "mean((r_c + r_r)²) that centers rewards on 0 (Eisenstein et al. "
                                             "use 0.01)")
