"""Scalar reward models: a one-label sequence-classification head on a causal LM's body.

:func:`load_reward_model` builds one for training (a new head on any LM posttrain can load, or a saved reward
model, optionally with LoRA) or, with ``require_head=True``, loads only a saved scalar reward model for
evaluation. :func:`sequence_scores` is the head applied at each row's last real token, :func:`token_scores` at
every token (a PPO critic's values).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch

from posttrain.errors import ConfigError, ModelError, first_line, location
from posttrain.models.embedded import EMBEDDED_MODEL_NAME
from posttrain.models.loader import adapter_base_reference, resolve_device, resolve_dtype, resolve_source
from posttrain.models.lora import lora_settings
from posttrain.models.self_scores import padded_batches, scoring
from posttrain.models.tiny import TINY_MODEL_NAME, tiny_model

REWARD_MODEL_FIX = "pass the directory of a reward model (an *ForSequenceClassification model with num_labels=1)"


def head_scores(head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """A one-label head on hidden states ``[..., H]``: scores ``[...]``, at least float32 (bf16 scores: the loss in
    float32)."""
    scores = head(hidden).squeeze(-1)
    return scores.to(torch.promote_types(scores.dtype, torch.float32))


def token_scores(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The one-label head's score ``[B, T]`` at every position of right-padded rows (a PPO critic's values)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(inner, "score", None)
    if head is None:
        raise ModelError(f"{type(inner).__name__} has no `score` head",
                         fix="train reward models with method: reward_model, which loads a sequence classifier")
    hidden = inner.base_model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"],
                              use_cache=False).last_hidden_state
    return head_scores(head, hidden)


def sequence_scores(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The one-label head's score ``[B]`` at the last real token of each right-padded row."""
    scores = token_scores(model, inputs)
    last = inputs["attention_mask"].sum(-1) - 1
    return scores[torch.arange(len(last), device=last.device), last]


def load_reward_model(name: str, *, dtype: str = "auto", device: str = "auto", lora=None,
                      pad_token_id: int | None = None, require_head: bool = False):
    """A one-label ``AutoModelForSequenceClassification`` on the LM ``name`` resolves to (see
    :mod:`posttrain.models.loader`): the LM body with a new score head, or a saved reward model (then its
    head too). ``lora`` adds fresh adapters (peft ``SEQ_CLS``: the score head is trained whole); an adapter
    directory loads its base and the adapter, trainable. ``require_head=True`` (evaluation) refuses anything
    but a saved one-label sequence classifier, whose head would otherwise be random."""
    if require_head:
        check_reward_model(name)
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    source = resolve_source(name)
    if source.kind == "adapter":
        if lora is not None:
            raise ConfigError(f"{name} already holds a LoRA adapter; a second one cannot be added on load",
                              where=location(field="lora"), fix="leave lora unset to continue training it")
        from peft import PeftModel

        base_name = adapter_base_reference(Path(source.location))
        base = _sequence_classifier(base_name, resolved_dtype, pad_token_id)
        model = PeftModel.from_pretrained(base, source.location, is_trainable=True)
    else:
        model = _sequence_classifier(name, resolved_dtype, pad_token_id)
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            settings = lora_settings(lora)
            targets = settings.target_modules
            model = get_peft_model(model, LoraConfig(
                r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, task_type="SEQ_CLS",
                target_modules=targets if isinstance(targets, str) else list(targets)))
    return model.to(resolved_device).eval()


def _sequence_classifier(name: str, dtype: torch.dtype, pad_token_id: int | None):
    from transformers import AutoModelForSequenceClassification

    source = resolve_source(name)
    if source.kind == "tiny":
        language_model = tiny_model()
        config = copy.deepcopy(language_model.config)
        config.num_labels = 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForSequenceClassification.from_config(config)
        model.base_model.load_state_dict(language_model.base_model.state_dict())
        model = model.to(dtype)
    elif source.kind in ("directory", "hub"):
        try:
            model = AutoModelForSequenceClassification.from_pretrained(source.location, num_labels=1, dtype=dtype)
        except (OSError, ValueError, KeyError) as error:
            raise ModelError(f"could not load '{name}' as a one-label sequence classifier: {first_line(error)}",
                             fix="use a causal LM (or a reward model saved by posttrain) this transformers "
                             "version can put a sequence-classification head on") from None
    else:
        raise ModelError(f"the base model of an adapter is itself an adapter ({source.location})",
                         fix="export the inner adapter as a merged model first")
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id  # HF's own pooling finds the last token by it
    reference = name if name in (EMBEDDED_MODEL_NAME, TINY_MODEL_NAME) else source.location
    model.name_or_path = model.config.name_or_path = reference
    return model


def check_reward_model(name: str) -> None:
    """Raise :class:`ModelError` unless ``name`` is a saved ``*ForSequenceClassification`` with one label."""
    from transformers import AutoConfig

    source = resolve_source(name)
    if source.kind not in ("directory", "hub"):
        raise ModelError(f"{name!r} is a causal language model, not a scalar reward model", fix=REWARD_MODEL_FIX)
    try:
        config = AutoConfig.from_pretrained(source.location)
    except (OSError, ValueError) as error:
        raise ModelError(f"could not read the config of {name!r}: {first_line(error)}", fix=REWARD_MODEL_FIX) from None
    architectures = config.architectures or []
    if not any(arch.endswith("ForSequenceClassification") for arch in architectures) or config.num_labels != 1:
        raise ModelError(f"{name!r} is {', '.join(architectures) or 'an unknown architecture'} with "
                         f"{config.num_labels} labels, not a scalar reward model", fix=REWARD_MODEL_FIX)


def score_sequences(model, sequences: Sequence[list[int]], batch_size: int = 8) -> list[float]:
    """:func:`sequence_scores` of token sequences, right-padded ``batch_size`` at a time, without gradients."""
    scores: list[float] = []
    with scoring(model):
        for _, inputs in padded_batches(list(sequences), 0, batch_size, next(model.parameters()).device):
            scores += sequence_scores(model, inputs).float().tolist()
    return scores
