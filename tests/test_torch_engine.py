"""TorchEngine against HFEngine: the same tokens, logprobs of the policy, stops, padding, seeds, fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel
from transformers.generation import TopKLogitsWarper, TopPLogitsWarper

from lit_search_rl.models.tiny import TinyModelConfig, create_tiny_model
from lit_search_rl.rollout.decoder import FusedDecoder, Rope, forward_modules, rotate
from lit_search_rl.rollout.engine import SamplingConfig
from lit_search_rl.rollout.hf_engine import HFEngine
from lit_search_rl.rollout.slot_cache import SlotCache
from lit_search_rl.rollout.torch_engine import StopMatcher, TorchEngine, length_groups, unsupported_reason


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def llama_dir(world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A llama decoder (no QK-norm: the fused decode step) with two query heads per key head, same tokenizer."""
    out = tmp_path_factory.mktemp("llama") / "model"
    config = TinyModelConfig(vocab_size=600, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                             intermediate_size=128, architecture="llama")  # fmt: skip
    create_tiny_model(world_dir, out, config)
    return out


@pytest.fixture(scope="module", params=["qwen3", "llama"], ids=["modules", "fused"])
def model(request, model_dir: Path):
    """Each engine test runs on a qwen3 decoder (the decode step calls its modules) and a llama one (fused)."""
    path = model_dir if request.param == "qwen3" else request.getfixturevalue("llama_dir")
    model = AutoModelForCausalLM.from_pretrained(path)
    assert (FusedDecoder.of(model) is not None) == (request.param == "llama")
    return model


def prompts_of(tokenizer, n: int) -> list[list[int]]:
    """Prompts of different lengths, so that the batch is left-padded."""
    words = ["who", "directed", "the", "film", "that", "won", "the", "prize", "in", "the", "city", "where"]
    return [tokenizer(" ".join(words[: 2 + i % 9]), add_special_tokens=False)["input_ids"] for i in range(n)]


@pytest.mark.parametrize("compact", [2, 10**6], ids=["compacting", "whole batch"])
def test_greedy_generations_equal_the_transformers_engines(model, tokenizer, compact: int, monkeypatch) -> None:
    prompts = prompts_of(tokenizer, 12)
    budgets = [16, 16, 5, 16, 9, 16, 16, 5, 16, 16, 9, 16]  # three budget groups
    greedy = SamplingConfig(temperature=0.0)
    # The first three tokens of the four longest prompts of the largest group as stop strings: those
    # rows stop first, and the other rows, of different lengths, decode on alone without the padding
    # only the stopped rows needed.
    free = HFEngine(model, tokenizer, greedy).generate(prompts, budgets, [])
    stop = [tokenizer.decode(free[row].token_ids[:3]) for row in (3, 5, 6, 8)]
    expected = HFEngine(model, tokenizer, greedy).generate(prompts, budgets, stop)
    selects, firsts = [], []
    select, update, append = SlotCache.select, SlotCache.update, SlotCache.append
    monkeypatch.setattr(SlotCache, "select", lambda self, rows: selects.append(rows) or select(self, rows))
    monkeypatch.setattr(SlotCache, "update", lambda self, *a: firsts.append(self.first) or update(self, *a))
    monkeypatch.setattr(SlotCache, "append", lambda self, *a: firsts.append(self.first) or append(self, *a))
    got = TorchEngine(model, tokenizer, greedy, min_compact_rows=compact).generate(prompts, budgets, stop)
    assert bool(selects) == (compact == 2)  # the unfinished rows went on alone
    assert (max(firsts) > 0) == (compact == 2)  # without reading the padding only stopped rows needed
    assert [g.token_ids for g in got] == [e.token_ids for e in expected]
    assert [g.finish for g in got] == [e.finish for e in expected]
    assert {g.finish for g in got} == {"stop", "length"}  # rows stop at different steps
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(torch.tensor(g.logprobs), torch.tensor(e.logprobs), atol=1e-5)


@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=1.0), SamplingConfig(temperature=0.5, top_k=3),
                                      SamplingConfig(temperature=2.0, top_p=0.6)])  # fmt: skip
def test_sampling_draws_from_the_distribution_generate_samples_from(model, tokenizer, sampling: SamplingConfig) -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]]).repeat(20000, 1)
    expected = logits[:1] / sampling.temperature
    if sampling.top_k:
        expected = TopKLogitsWarper(sampling.top_k)(None, expected)
    if sampling.top_p < 1:
        expected = TopPLogitsWarper(sampling.top_p)(None, expected)
    expected = expected.softmax(-1)[0]
    engine = TorchEngine(model, tokenizer, sampling)
    torch.manual_seed(0)
    tokens, logprobs = engine._sample(logits, torch.zeros((20000, 1), dtype=torch.long))
    frequencies = torch.bincount(tokens, minlength=6) / len(tokens)
    assert torch.allclose(frequencies, expected, atol=0.015)
    assert (frequencies[expected == 0] == 0).all()  # tokens the warpers remove are never drawn
    assert torch.allclose(logprobs, logits.log_softmax(-1).gather(-1, tokens[:, None])[:, 0])  # raw logits


def test_logprobs_equal_a_teacher_forced_forward(model, tokenizer) -> None:
    prompts = prompts_of(tokenizer, 6)
    engine = TorchEngine(model, tokenizer, SamplingConfig(temperature=1.0, seed=1))
    for prompt, gen in zip(prompts, engine.generate(prompts, [20] * 6, []), strict=True):
        ids = torch.tensor([prompt + gen.token_ids])
        with torch.no_grad():
            logp = model(ids).logits.float().log_softmax(-1)[0, len(prompt) - 1 : -1]
        expected = logp.gather(-1, torch.tensor(gen.token_ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(gen.logprobs), expected, atol=1e-4)


@pytest.mark.parametrize("rope_type", ["default", "dynamic"], ids=["table", "per call"])
def test_rotary_angles_and_rotation_equal_the_models_own(model, rope_type: str, monkeypatch) -> None:
    from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb

    monkeypatch.setattr(model.model.rotary_emb, "rope_type", rope_type)
    rope = Rope(model, 64)
    assert (rope.table is None) == (rope_type == "dynamic")
    positions = torch.tensor([[0, 5, 63], [7, 7, 1]])  # (B, T)
    d = model.config.head_dim
    q, k = torch.randn(2, 4, 3, d), torch.randn(2, 2, 3, d)  # (B, heads, T, d)
    cos, sin = model.model.rotary_emb(q, positions)
    expected_q, expected_k = apply_rotary_pos_emb(q, k, cos, sin)
    table_cos, signed_sin = rope(positions)
    assert torch.equal(rotate(q, table_cos, signed_sin), expected_q)  # bit for bit
    assert torch.equal(rotate(k, table_cos, signed_sin), expected_k)


def test_seeded_calls_repeat_and_differ(model, tokenizer) -> None:
    prompts = prompts_of(tokenizer, 8)

    def run(seed: int) -> list[list[int]]:
        engine = TorchEngine(model, tokenizer, SamplingConfig(temperature=1.0, seed=seed))
        return [g.token_ids for call in range(2) for g in engine.generate(prompts, [12] * 8, [])]

    assert run(4) == run(4)
    assert run(4) != run(5)
    first, second = run(4)[:8], run(4)[8:]
    assert first != second  # each call takes the next seed


def test_a_row_alone_or_in_a_padded_batch_gives_the_same_greedy_tokens(model, tokenizer) -> None:
    prompts = prompts_of(tokenizer, 9)
    engine = TorchEngine(model, tokenizer, SamplingConfig(temperature=0.0))
    batched = engine.generate(prompts, [12] * 9, [])
    alone = [engine.generate([p], [12], [])[0] for p in prompts]
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]


def test_eos_ends_a_row_and_the_others_go_on(model, tokenizer) -> None:
    prompts = prompts_of(tokenizer, 4)
    engine = TorchEngine(model, tokenizer, SamplingConfig(temperature=0.0))
    [free] = engine.generate(prompts[:1], [10], [])
    engine.eos_ids = {free.token_ids[2]}  # the third greedy token of the first row now ends it
    first, *others = engine.generate(prompts, [10] * 4, [])
    end = free.token_ids.index(free.token_ids[2]) + 1
    assert first.finish == "eos" and first.token_ids == free.token_ids[:end]
    assert all(o.finish == "eos" or len(o.token_ids) == 10 for o in others)


def test_budgets_threads_and_training_mode_are_kept(model, tokenizer) -> None:
    model.train()
    threads = torch.get_num_threads()
    engine = TorchEngine(model, tokenizer, SamplingConfig(temperature=1.0, seed=0))
    gens = engine.generate(prompts_of(tokenizer, 3), [0, 1, 7], [])
    assert [len(g.token_ids) for g in gens] == [0, 1, 7] and [g.finish for g in gens] == ["length"] * 3
    assert model.training and torch.get_num_threads() == threads


def test_lora_adapters_take_part_in_generation(model_dir: Path, tokenizer) -> None:
    peft = pytest.importorskip("peft")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    wrapped = peft.get_peft_model(model, config)
    prompts = prompts_of(tokenizer, 4)
    greedy = SamplingConfig(temperature=0.0)
    expected = HFEngine(wrapped, tokenizer, greedy).generate(prompts, [10] * 4, [])
    got = TorchEngine(wrapped, tokenizer, greedy).generate(prompts, [10] * 4, [])
    assert [g.token_ids for g in got] == [e.token_ids for e in expected]
    with wrapped.disable_adapter():
        plain = TorchEngine(wrapped, tokenizer, greedy).generate(prompts, [10] * 4, [])
    assert [g.token_ids for g in plain] != [g.token_ids for g in got]


def test_an_unsupported_model_is_refused_with_the_reason(tokenizer) -> None:
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=len(tokenizer)))
    assert "gpt2" in unsupported_reason(gpt2)
    with pytest.raises(ValueError, match="TorchEngine cannot run this model: model type 'gpt2'"):
        TorchEngine(gpt2, tokenizer)


def test_the_grpo_module_uses_it_and_falls_back_with_a_notice(model_dir: Path, bm25_dir: Path, monkeypatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    import lit_search_rl.grpo as grpo
    import lit_search_rl.grpo.rollouts as rollouts

    module = grpo.GRPOModule(model=str(model_dir), retriever=str(bm25_dir), group_size=2, batch_size=1,
                             micro_batch_size=2)  # fmt: skip
    module.configure_model()
    assert type(module.runner.engine_for(module.policy, SamplingConfig())) is TorchEngine  # the default
    monkeypatch.setattr(rollouts, "unsupported_reason", lambda model: "model type 'gpt2' is not one of llama")
    with caplog.at_level("INFO"):
        engines = [module.runner.engine_for(module.policy, SamplingConfig()) for _ in range(2)]
    assert all(type(e) is HFEngine for e in engines)
    notices = [r.getMessage() for r in caplog.records if "falls back" in r.getMessage()]
    assert notices == ["model.engine torch falls back to hf: model type 'gpt2' is not one of llama"]  # once
    hf = grpo.GRPOModule(model=str(model_dir), retriever=str(bm25_dir), group_size=2, batch_size=1,
                         micro_batch_size=2, engine="hf")  # fmt: skip
    hf.configure_model()
    assert type(hf.runner.engine_for(hf.policy, SamplingConfig())) is HFEngine
    with pytest.raises(ValueError, match="model.engine must be one of torch, hf, vllm"):
        grpo.GRPOModule(model=str(model_dir), retriever=str(bm25_dir), engine="fast")


def test_the_next_turn_reuses_the_sequences_of_the_last_call_exactly(model, tokenizer) -> None:
    prompts = prompts_of(tokenizer, 6)
    prompts[3] = prompts[1]  # the same prompt twice (K rollouts of one question) is computed once
    info = tokenizer(" the city where the prize", add_special_tokens=False)["input_ids"]
    sampling = SamplingConfig(temperature=1.0, seed=7)
    free = TorchEngine(model, tokenizer, sampling).generate(prompts, [10] * 6, [])
    # The third token of four rows as stop strings: rows stop at different steps, and the unfinished
    # ones go on in a smaller cache.
    stop = [tokenizer.decode(g.token_ids[2:3]) for g in free[:4]]
    reusing = TorchEngine(model, tokenizer, sampling, min_compact_rows=2)
    fresh = TorchEngine(model, tokenizer, sampling, reuse_prefixes=False, min_compact_rows=2)
    first = reusing.generate(prompts, [10] * 6, stop)
    assert [g.token_ids for g in first] == [g.token_ids for g in fresh.generate(prompts, [10] * 6, stop)]
    assert len({len(g.token_ids) for g in first}) > 1
    # The next turn: each prompt extended by its generation and an information block; one row is new.
    turn = [[*p, *g.token_ids, *info[: 1 + i]] for i, (p, g) in enumerate(zip(prompts, first, strict=True))]
    turn[5] = prompts_of(tokenizer, 9)[8]
    assert reusing._kept.longest_prefix(turn[0]) is not None  # it will be reused
    again, expected = reusing.generate(turn, [12] * 6, []), fresh.generate(turn, [12] * 6, [])
    assert [g.token_ids for g in again] == [g.token_ids for g in expected]
    for a, e in zip(again, expected, strict=True):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(e.logprobs), atol=1e-5)


@pytest.mark.parametrize("folder", ["model_dir", "llama_dir"], ids=["modules", "fused"])
def test_sequences_are_not_reused_after_the_weights_change(folder: str, tokenizer, request) -> None:
    # The fused decode step's weights are copies: they must be built again too.
    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(folder))
    greedy = SamplingConfig(temperature=0.0)
    engine = TorchEngine(model, tokenizer, greedy)
    prompts = prompts_of(tokenizer, 3)
    first = engine.generate(prompts, [8] * 3, [])
    with torch.no_grad():
        for layer in model.model.layers:  # as an optimizer step: in place
            layer.self_attn.v_proj.weight.add_(torch.randn_like(layer.self_attn.v_proj.weight))
    turn = [[*p, *g.token_ids] for p, g in zip(prompts, first, strict=True)]
    expected = TorchEngine(model, tokenizer, greedy, reuse_prefixes=False).generate(turn, [8] * 3, [])
    got = engine.generate(turn, [8] * 3, [])
    assert [g.token_ids for g in got] == [g.token_ids for g in expected]
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(torch.tensor(g.logprobs), torch.tensor(e.logprobs), atol=1e-5)


def test_the_fused_decode_step_gives_the_modules_logits(llama_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    fused = FusedDecoder.of(model)
    rows, slots = 3, 12
    cache, reference = (SlotCache(model.config, rows, slots, torch.float32, torch.device("cpu")) for _ in range(2))
    rope = Rope(model, slots)
    ids = torch.randint(0, 600, (rows, slots))
    mask = torch.zeros((rows, model.config.num_key_value_heads, 1, slots))
    with torch.no_grad():
        for n in range(slots):  # one token per step from an empty cache, both ways
            for c in (cache, reference):
                c.advance(1)
            positions = torch.full((rows,), n)
            step_mask = mask[..., : n + 1]
            got = fused.step(model, ids[:, n], positions, step_mask.reshape(-1, 1, n + 1), cache, rope)
            expected = forward_modules(model, ids[:, n : n + 1], positions[:, None], step_mask, reference, rope)
            assert torch.allclose(got, expected, atol=1e-5), n
        assert torch.allclose(got, model(ids).logits[:, -1], atol=1e-5)  # and a forward over the whole sequence


def test_the_fused_decode_step_is_refused_where_it_would_change_the_model(
    llama_dir: Path, model_dir: Path, tokenizer
) -> None:
    peft = pytest.importorskip("peft")
    llama = AutoModelForCausalLM.from_pretrained(llama_dir)
    assert FusedDecoder.of(llama) is not None
    assert FusedDecoder.of(AutoModelForCausalLM.from_pretrained(model_dir)) is None  # norms on q and k
    assert FusedDecoder.of(AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.bfloat16)) is None
    for limit, fused in ((None, True), (10**9, True), (10, False)):  # a large model keeps its memory
        engine = TorchEngine(llama, tokenizer, SamplingConfig(temperature=0.0), fused_max_parameters=limit)
        engine.generate(prompts_of(tokenizer, 2), [3, 3], [])
        assert (engine._fused[1] is not None) == fused
    wrapped = peft.get_peft_model(llama, peft.LoraConfig(r=4, target_modules=["q_proj"]))
    assert FusedDecoder.of(wrapped.get_base_model()) is None  # adapters keep their own forward


def test_generation_under_autocast_keeps_the_models_dtype(model, tokenizer) -> None:
    # A bf16-mixed training step rolls out under autocast: the cache is the model's dtype, and so are the logprobs.
    prompts = prompts_of(tokenizer, 4)
    expected = TorchEngine(model, tokenizer, SamplingConfig(temperature=0.0)).generate(prompts, [8] * 4, ["the"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = TorchEngine(model, tokenizer, SamplingConfig(temperature=0.0)).generate(prompts, [8] * 4, ["the"])
    assert [g.token_ids for g in got] == [e.token_ids for e in expected]
    assert [g.logprobs for g in got] == [e.logprobs for e in expected]


def test_the_stop_matcher_answers_as_transformers_criteria(tokenizer) -> None:
    from transformers.generation import StopStringCriteria

    stops = ["</search>", "</answer>", "ab"]
    criteria = StopStringCriteria(tokenizer, stops)
    matcher = StopMatcher(criteria)
    generator = torch.Generator().manual_seed(0)
    planted = [tokenizer(f"x {s}", add_special_tokens=False)["input_ids"] for s in stops]
    found = 0
    for _ in range(200):
        ids = torch.randint(0, len(tokenizer), (16, 12), generator=generator)
        for row, stop_ids in enumerate(planted):
            ids[row, -len(stop_ids) :] = torch.tensor(stop_ids)
        expected = criteria(ids, None)
        assert torch.equal(matcher(ids, ids[:, -1]), expected)
        found += int(expected.sum())
    assert found >= 3 * 200  # the planted rows matched, so both branches ran


def test_length_groups_cover_every_row_once_and_trade_padding_for_passes() -> None:
    lengths = [5, 300, 7, 290, 6, 310]
    for cost in (0, 100, 10**6):
        groups = length_groups(lengths, cost)
        assert sorted(i for g in groups for i in g) == list(range(6))
    assert length_groups(lengths, 10**6) == [[0, 4, 2, 3, 1, 5]]  # one pass: padding is cheap
    assert [sorted(g) for g in length_groups(lengths, 100)] == [[0, 2, 4], [1, 3, 5]]  # short and long apart
