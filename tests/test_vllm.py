"""The vLLM engine and weight sync, for real, against vLLM's CPU build (``make test-vllm``).

These run in their own environment (vLLM's CPU build needs an older transformers), so the fast
suite deselects them (marker ``vllm``). The engine is the tiny random Qwen3 of the test world in
float32, where vLLM's CPU kernels and transformers agree to the greedy token.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from lit_search_rl.callbacks.weight_sync import VLLMWeightSync, sync_weights  # noqa: E402
from lit_search_rl.full_weights import iter_full_weights  # noqa: E402
from lit_search_rl.policy import load_policy, load_tokenizer  # noqa: E402
from lit_search_rl.rollout.encoding import encode_prompt  # noqa: E402
from lit_search_rl.rollout.engine import SamplingConfig  # noqa: E402
from lit_search_rl.rollout.hf_engine import HFEngine  # noqa: E402
from lit_search_rl.rollout.vllm_engine import VLLMConfig, VLLMEngine  # noqa: E402
from tests.test_grpo import fit  # noqa: E402

QUESTIONS = [
    "Who founded the company that produced the film?",
    "In which country is the birthplace of the director located?",
    "Which band was formed first?",
    "What is the capital of the country?",
]
GREEDY = SamplingConfig(temperature=0)
CPU_ENGINE = VLLMConfig(dtype="float32", enforce_eager=True, max_num_seqs=8)


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> VLLMEngine:
    return VLLMEngine(str(model_dir), CPU_ENGINE, max_model_len=512, sampling=GREEDY)


@pytest.fixture(scope="module")
def prompts(model_dir: Path) -> list[list[int]]:
    tokenizer = load_tokenizer(str(model_dir))
    return [encode_prompt(tokenizer, q, 3) for q in QUESTIONS]


def hf_greedy(policy, model_dir: Path, prompts: list[list[int]], n: int = 24, stop: tuple[str, ...] = ()):
    return HFEngine(policy, load_tokenizer(str(model_dir)), GREEDY).generate(prompts, [n] * len(prompts), list(stop))


def test_greedy_tokens_and_logprobs_match_the_transformers_policy(engine, model_dir, prompts) -> None:
    reference = hf_greedy(load_policy(str(model_dir), "float32"), model_dir, prompts)
    generated = engine.generate(prompts, [24] * len(prompts), [])
    for ours, ref in zip(generated, reference, strict=True):
        assert ours.token_ids == ref.token_ids
        assert ours.finish == ref.finish
        torch.testing.assert_close(torch.tensor(ours.logprobs), torch.tensor(ref.logprobs), atol=1e-4, rtol=0)


def test_a_stop_string_ends_the_turn_and_stays_in_the_output(engine, model_dir, prompts) -> None:
    tokenizer = load_tokenizer(str(model_dir))
    free = engine.generate(prompts[:1], [24], [])[0].token_ids
    stop = tokenizer.decode(free[4:6])  # text the greedy continuation is known to produce
    out = engine.generate(prompts[:1], [24], [stop])[0]
    assert out.finish == "stop"
    assert tokenizer.decode(out.token_ids).endswith(stop)
    # the turn ends with the first token whose text completes the stop string, and keeps it
    end = next(n for n in range(1, len(free) + 1) if stop in tokenizer.decode(free[:n]))
    assert out.token_ids == free[:end]


def test_a_zero_budget_returns_an_empty_generation(engine, prompts) -> None:
    out = engine.generate(prompts[:2], [0, 3], [])
    assert out[0].token_ids == [] and out[0].finish == "length"
    assert len(out[1].token_ids) <= 3


def _one_optimizer_step(policy, prompts: list[list[int]], lr: float = 0.05) -> None:
    """A real AdamW step on the language-model loss of the prompts: every weight moves."""
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr)
    for prompt in prompts:
        ids = torch.tensor([prompt])
        policy(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()


def test_weight_sync_makes_vllm_follow_the_updated_policy(engine, model_dir, prompts) -> None:
    policy = load_policy(str(model_dir), "float32")
    before = [g.token_ids for g in engine.generate(prompts, [24] * len(prompts), [])]
    _one_optimizer_step(policy, prompts)
    updated = [g.token_ids for g in hf_greedy(policy, model_dir, prompts)]
    assert updated != before, "the update should change some greedy continuation"
    assert [g.token_ids for g in engine.generate(prompts, [24] * len(prompts), [])] == before  # not synced yet

    names = [name for name, _ in iter_full_weights(policy)]
    assert "lm_head.weight" in names and "model.embed_tokens.weight" in names  # tied: pushed under both names
    seconds = sync_weights(policy, engine)
    assert seconds > 0
    assert [g.token_ids for g in engine.generate(prompts, [24] * len(prompts), [])] == updated

    # back to the initial weights, so the other tests see the model folder's weights again
    sync_weights(load_policy(str(model_dir), "float32"), engine)
    assert [g.token_ids for g in engine.generate(prompts, [24] * len(prompts), [])] == before


def test_lora_weights_are_merged_for_the_push_and_unmerged_after(engine, model_dir, prompts) -> None:
    peft = pytest.importorskip("peft")
    policy = peft.get_peft_model(
        load_policy(str(model_dir), "float32"),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]),
    )
    torch.manual_seed(0)
    for name, param in policy.named_parameters():
        if "lora_B" in name:  # B starts at zero; give the adapters an effect
            param.data.normal_(0, 0.5)
    adapters = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" in n}
    expected = [g.token_ids for g in hf_greedy(policy, model_dir, prompts)]
    names = [name for name, _ in iter_full_weights(policy)]
    assert not any("lora" in n or "base_layer" in n or n.startswith("base_model") for n in names)
    sync_weights(policy, engine)
    assert [g.token_ids for g in engine.generate(prompts, [24] * len(prompts), [])] == expected
    assert not policy.base_model.model.model.layers[0].self_attn.q_proj.merged  # unmerged again
    assert all(p.equal(adapters[n]) for n, p in policy.named_parameters() if "lora_" in n)
    assert [g.token_ids for g in hf_greedy(policy, model_dir, prompts)] == expected
    sync_weights(load_policy(str(model_dir), "float32"), engine)


def test_grpo_fit_with_the_vllm_engine_syncs_after_every_step(tmp_path, model_dir, world_dir, bm25_dir, prompts,
                                                              coin_reward) -> None:  # fmt: skip
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cli = fit(tmp_path, model_dir, world_dir, bm25_dir,
              "--model.engine", "vllm", "--model.vllm.dtype", "float32", "--model.vllm.enforce_eager", "true",
              "--model.vllm.max_num_seqs", "8",
              "--trainer.callbacks+=lit_search_rl.callbacks.weight_sync.VLLMWeightSync")  # fmt: skip
    m = cli.model
    assert m.trainer.global_step >= 1
    sync = next(c for c in m.trainer.callbacks if isinstance(c, VLLMWeightSync))
    assert sync.synced_step == m.trainer.global_step
    events = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert "train/weight_sync_time" in events.Tags()["scalars"]
    # the engine holds the trained policy: its greedy continuations are the policy's
    m.rollout_engine.sampling = GREEDY
    ours = [g.token_ids for g in m.rollout_engine.generate(prompts, [24] * len(prompts), [])]
    assert ours == [g.token_ids for g in hf_greedy(m.policy, model_dir, prompts)]


def test_fit_with_the_vllm_engine_and_no_weight_sync_is_refused(tmp_path, model_dir, world_dir, bm25_dir,
                                                                coin_reward) -> None:  # fmt: skip
    with pytest.raises(ValueError, match="VLLMWeightSync"):
        fit(tmp_path, model_dir, world_dir, bm25_dir, "--model.engine", "vllm")
