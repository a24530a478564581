"""The HF rollout engine: greedy decoding, sampling log-probs, batching, seeding, stopping."""

from __future__ import annotations

import pytest
import torch

from posttrain.errors import ConfigError, DataError
from posttrain.models import tiny_model, tiny_tokenizer
from posttrain.rollout import Generation, HFEngine, RolloutEngine, SamplingParams


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    texts = ["hello", "what is 2+2?", "x", "a longer prompt with more tokens"]
    return [tokenizer(text)["input_ids"] for text in texts]


def greedy_by_hand(model, prompt: list[int], max_new_tokens: int, stop_ids: list[int]) -> list[int]:
    """Full forward pass per step (no cache, no padding), argmax of the last position."""
    ids = list(prompt)
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            generated.append(token)
            ids.append(token)
            if token in stop_ids:
                break
    return generated


def completion_logprobs(
    model, generation: Generation, temperature: float = 1.0, top_k: int = 0
) -> torch.Tensor:
    """log softmax of (top-k filtered) logits / T at the generated tokens, from one forward pass."""
    ids = torch.tensor([generation.prompt_ids + generation.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float() / temperature
    start = len(generation.prompt_ids)
    scores = logits[start - 1 : start - 1 + len(generation.token_ids)]
    if top_k:
        kth = scores.topk(top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    return scores.log_softmax(-1).gather(-1, torch.tensor(generation.token_ids)[:, None]).squeeze(-1)


def test_engine_satisfies_the_protocol(model, tokenizer):
    assert isinstance(HFEngine(model, tokenizer), RolloutEngine)


def test_greedy_equals_hand_written_loop(model, tokenizer, prompts):
    engine = HFEngine(model, tokenizer, batch_size=4)
    generations = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=12))
    assert [(g.prompt_index, g.sample_index) for g in generations] == [(i, 0) for i in range(len(prompts))]
    for generation, prompt in zip(generations, prompts, strict=True):
        assert generation.prompt_ids == prompt
        assert generation.token_ids == greedy_by_hand(model, prompt, 12, engine.stop_ids)
        assert len(generation.logprobs) == len(generation.token_ids)


def test_greedy_logprobs_are_the_model_distribution(model, tokenizer, prompts):
    generations = HFEngine(model, tokenizer).generate(
        prompts, SamplingParams(temperature=0, max_new_tokens=8)
    )
    for generation in generations:
        expected = completion_logprobs(model, generation)
        assert torch.allclose(torch.tensor(generation.logprobs), expected, atol=1e-4)


def test_sampled_logprobs_match_model_logits_at_temperature_one(model, tokenizer, prompts):
    engine = HFEngine(model, tokenizer, batch_size=6)
    generations = engine.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=10, n=3, seed=3))
    assert len(generations) == 3 * len(prompts)
    for generation in generations:
        expected = completion_logprobs(model, generation)
        assert torch.allclose(torch.tensor(generation.logprobs), expected, atol=1e-4)


def test_sampled_logprobs_follow_temperature_and_top_k(model, tokenizer, prompts):
    params = SamplingParams(temperature=0.7, top_k=5, max_new_tokens=10, n=2, seed=5)
    for generation in HFEngine(model, tokenizer).generate(prompts, params):
        expected = completion_logprobs(model, generation, temperature=0.7, top_k=5)
        assert torch.isfinite(expected).all()
        assert torch.allclose(torch.tensor(generation.logprobs), expected, atol=1e-4)


def test_top_p_keeps_only_the_nucleus(model, tokenizer, prompts):
    params = SamplingParams(temperature=1.0, top_p=0.3, max_new_tokens=10, n=4, seed=0)
    for generation in HFEngine(model, tokenizer).generate(prompts, params):
        full = completion_logprobs(model, generation)
        sampled = torch.tensor(generation.logprobs)
        # renormalizing over a nucleus can only raise each token's probability
        assert (sampled >= full - 1e-5).all()
        assert (sampled > full + 1e-3).any()


def test_batched_equals_one_by_one_for_greedy(model, tokenizer, prompts):
    params = SamplingParams(temperature=0, max_new_tokens=10)
    batched = HFEngine(model, tokenizer, batch_size=8).generate(prompts, params)
    alone = [HFEngine(model, tokenizer, batch_size=1).generate([p], params)[0] for p in prompts]
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]
    for left, right in zip(batched, alone, strict=True):
        assert left.logprobs == pytest.approx(right.logprobs, abs=1e-4)


def test_seed_reproducibility_and_caller_rng_untouched(model, tokenizer, prompts):
    engine = HFEngine(model, tokenizer, batch_size=4)
    params = SamplingParams(temperature=1.0, max_new_tokens=8, n=3, seed=11)
    torch.manual_seed(123)
    first = engine.generate(prompts, params)
    after_first = torch.rand(1)
    torch.manual_seed(123)
    second = engine.generate(prompts, params)
    assert torch.rand(1) == after_first  # the caller's random stream is not consumed
    assert [g.token_ids for g in first] == [g.token_ids for g in second]
    assert [g.logprobs for g in first] == [g.logprobs for g in second]
    other = engine.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=8, n=3, seed=12))
    assert [g.token_ids for g in other] != [g.token_ids for g in first]
    samples_of_first_prompt = [g.token_ids for g in first if g.prompt_index == 0]
    assert len({tuple(t) for t in samples_of_first_prompt}) > 1


def test_more_samples_than_batch_size_are_split_and_ordered(model, tokenizer, prompts):
    engine = HFEngine(model, tokenizer, batch_size=2)
    generations = engine.generate(prompts[:2], SamplingParams(max_new_tokens=4, n=5, seed=0))
    assert [(g.prompt_index, g.sample_index) for g in generations] == [
        (p, s) for p in range(2) for s in range(5)
    ]
    assert all(g.prompt_ids == prompts[g.prompt_index] for g in generations)


def test_greedy_with_several_samples_repeats_the_one_answer(model, tokenizer, prompts):
    generations = HFEngine(model, tokenizer).generate(
        prompts[:2], SamplingParams(temperature=0, max_new_tokens=6, n=3)
    )
    assert len(generations) == 6
    for prompt_index in range(2):
        group = [g for g in generations if g.prompt_index == prompt_index]
        assert [g.sample_index for g in group] == [0, 1, 2]
        assert all(g.token_ids == group[0].token_ids for g in group)
        assert group[1].token_ids is not group[0].token_ids


def test_completion_is_cut_after_the_first_stop_token(model, tokenizer, prompts):
    params = SamplingParams(temperature=0, max_new_tokens=12)
    reference = HFEngine(model, tokenizer).generate(prompts, params)
    longest = max(reference, key=len)
    assert len(longest) > 5
    stop = longest.token_ids[4]  # make a token the model emits early end generation
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop]
    try:
        engine = HFEngine(model, tokenizer, batch_size=4)
        assert stop in engine.stop_ids and tokenizer.eos_token_id in engine.stop_ids
        stopped = engine.generate(prompts, params)
    finally:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    for full, cut in zip(reference, stopped, strict=True):
        if stop in full.token_ids:
            end = full.token_ids.index(stop)
            assert cut.token_ids == full.token_ids[: end + 1]
            assert cut.finish_reason == "eos"
            assert cut.text == tokenizer.decode(full.token_ids[:end])
            assert len(cut.logprobs) == end + 1
        else:
            assert cut.token_ids == full.token_ids and cut.finish_reason == full.finish_reason
        assert tokenizer.pad_token_id not in cut.token_ids
    assert stopped[longest.prompt_index].finish_reason == "eos" and len(stopped[longest.prompt_index]) <= 5


def test_eos_first_gives_empty_text(tokenizer, prompts):
    model = tiny_model(seed=1)
    head = torch.nn.Linear(model.config.hidden_size, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = 100.0  # the end token wins at every position
    model.lm_head = head
    generations = HFEngine(model, tokenizer).generate(prompts, SamplingParams(max_new_tokens=5, n=2, seed=0))
    for generation in generations:
        assert generation.token_ids == [tokenizer.eos_token_id]
        assert generation.text == ""
        assert generation.finish_reason == "eos"


def test_training_flag_is_restored(model, tokenizer, prompts):
    engine = HFEngine(model, tokenizer)
    seen_training: list[bool] = []
    handle = model.register_forward_pre_hook(lambda module, args: seen_training.append(module.training))
    try:
        model.train()
        engine.generate(prompts[:1], SamplingParams(max_new_tokens=3, seed=0))
        assert model.training
        model.eval()
        engine.generate(prompts[:1], SamplingParams(max_new_tokens=3, seed=0))
        assert not model.training
    finally:
        handle.remove()
    assert seen_training and not any(seen_training)


def test_empty_prompt_is_a_data_error(model, tokenizer):
    with pytest.raises(DataError, match="prompt 1"):
        HFEngine(model, tokenizer).generate([[5, 6], []], SamplingParams(max_new_tokens=2))


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("max_new_tokens", 0),
        ("n", 0),
        ("seed", -3),
    ],
)
def test_sampling_params_validation(field, value):
    with pytest.raises(ConfigError, match=field):
        SamplingParams(**{field: value})


def test_sampling_params_defaults():
    params = SamplingParams()
    assert (params.temperature, params.top_p, params.top_k, params.n, params.seed) == (1.0, 1.0, 0, 1, None)
    assert not params.greedy and SamplingParams(temperature=0).greedy


def test_model_sampling_defaults_do_not_leak_in(tokenizer, prompts):
    model = tiny_model(seed=2)
    model.generation_config.do_sample = True
    model.generation_config.temperature = 0.3
    model.generation_config.top_k = 3
    model.generation_config.repetition_penalty = 1.5
    engine = HFEngine(model, tokenizer)
    for generation in engine.generate(
        prompts, SamplingParams(temperature=1.0, max_new_tokens=8, n=2, seed=0)
    ):
        assert torch.allclose(
            torch.tensor(generation.logprobs), completion_logprobs(model, generation), atol=1e-4
        )
    for generation in engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=8)):
        assert generation.token_ids == greedy_by_hand(model, generation.prompt_ids, 8, engine.stop_ids)


def test_rollout_dtype_samples_from_the_cast_model_and_restores_the_weights(model, tokenizer, prompts):
    """With ``dtype`` the engine draws the same tokens, with the same log-probs, as an engine over a copy of the
    model whose parameters are bf16 (buffers such as the rotary frequencies stay fp32); afterwards every parameter
    is the same object with the same fp32 values as before."""
    import copy

    bf16_copy = copy.deepcopy(model)
    for parameter in bf16_copy.parameters():
        parameter.data = parameter.data.to(torch.bfloat16)
    before = {name: (parameter, parameter.detach().clone()) for name, parameter in model.named_parameters()}
    params = SamplingParams(temperature=1.0, max_new_tokens=8, n=3, seed=11)
    cast = HFEngine(model, tokenizer, batch_size=6, dtype=torch.bfloat16).generate(prompts, params)
    copied = HFEngine(bf16_copy, tokenizer, batch_size=6).generate(prompts, params)
    assert [g.token_ids for g in cast] == [g.token_ids for g in copied]
    assert [g.logprobs for g in cast] == [g.logprobs for g in copied]
    fp32 = HFEngine(model, tokenizer, batch_size=6).generate(prompts, params)
    fp32_logprobs = torch.tensor([lp for g in fp32 for lp in g.logprobs])
    assert fp32_logprobs.numel() and [g.logprobs for g in fp32] != [g.logprobs for g in cast]
    for name, parameter in model.named_parameters():
        same_object, values = before[name]
        assert parameter is same_object and parameter.dtype == torch.float32
        assert torch.equal(parameter, values)


def test_rollout_dtype_must_be_floating_point(model, tokenizer):
    from posttrain.errors import ModelError

    with pytest.raises(ModelError, match="not a floating-point type"):
        HFEngine(model, tokenizer, dtype=torch.int8)
