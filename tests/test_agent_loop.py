"""The agent loop: exact masks, one retriever call per turn, stops and limits, with scripted and real engines."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_search_rl.retrieval.index import load_retriever
from lit_search_rl.rollout.agent import AgentLoop, RolloutConfig, Trajectory
from lit_search_rl.rollout.encoding import encode_messages
from lit_search_rl.rollout.engine import Generation, GenerationEngine, SamplingConfig
from lit_search_rl.rollout.hf_engine import HFEngine
from lit_search_rl.rollout.protocols import TagProtocol, ToolCallProtocol
from lit_search_rl.rollout.tags import INFO_CLOSE, INFO_OPEN, information_block
from lit_search_rl.rollout.torch_engine import TorchEngine


class ScriptedEngine(GenerationEngine):
    """A test double that writes given turns: ``script[question][n]`` is the text of turn n.

    It emits the tokenizer's ids of that text, cut after the first stop string, at EOS, or at
    the token budget, as a real engine would.
    """

    def __init__(self, tokenizer, script: dict[str, list[str]], turn_of=None) -> None:
        self.tokenizer, self.script = tokenizer, script
        # Which turn a context is at: by default, the number of information blocks it holds.
        self.turn_of = turn_of or (lambda context: context.count(INFO_CLOSE + "\n\n"))
        self.calls: list[int] = []

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], stop: Sequence[str]):
        self.calls.append(len(prompts))
        out = []
        for prompt, budget in zip(prompts, max_new_tokens, strict=True):
            context = self.tokenizer.decode(prompt)
            question = next(q for q in self.script if q in context)
            text = self.script[question][self.turn_of(context)]
            ids, finish = [], "length"
            for token in self.tokenizer(text, add_special_tokens=False)["input_ids"]:
                if len(ids) == budget:
                    break
                ids.append(token)
                if any(self.tokenizer.decode(ids).endswith(s) for s in stop):
                    finish = "stop"
                    break
            else:
                if len(ids) < budget:
                    ids.append(self.tokenizer.eos_token_id)
                    finish = "eos"
            out.append(Generation(ids, [-1.0] * len(ids), finish))
        return out


def runs(t: Trajectory, value: int) -> list[list[int]]:
    """Maximal runs of response ids whose mask equals ``value``."""
    groups: list[list[int]] = []
    previous = None
    for token, m in zip(t.response_ids, t.loss_mask, strict=True):
        if m == value:
            if previous != value:
                groups.append([])
            groups[-1].append(token)
        previous = m
    return groups


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def retriever(bm25_dir: Path):
    return load_retriever(bm25_dir)


def loop(tokenizer, retriever, script, **config) -> tuple[AgentLoop, ScriptedEngine]:
    engine = ScriptedEngine(tokenizer, script)
    return AgentLoop(engine, retriever, tokenizer, RolloutConfig(**config)), engine


def test_multi_turn_masks_select_model_text_and_information_exactly(tokenizer, retriever) -> None:
    script = {
        "Q one?": ["<think> a </think>\n<search> festival | born </search>", "<answer> Paris </answer>"],
        "Q two?": ["<think> hmm </think>\n<answer> Rome </answer>"],
    }  # fmt: skip
    agent, engine = loop(tokenizer, retriever, script, max_information_tokens=4096)
    one, two = agent.rollout(["Q one?", "Q two?"])
    assert (one.finish_reason, one.answer, one.num_searches, one.num_turns) == ("answered", "Paris", 2, 2)
    assert (two.finish_reason, two.answer, two.num_searches, two.num_turns) == ("answered", "Rome", 0, 1)
    assert engine.calls == [2, 1] and agent.stats.retriever_calls == 1
    # Mask-1 tokens are exactly the model's text; mask-0 tokens exactly the information block.
    assert "".join(tokenizer.decode(r) for r in runs(one, 1)) == one.text == "".join(script["Q one?"])
    docs = [d for r in retriever.search(["festival", "born"], 3) for d in r]
    assert [tokenizer.decode(r) for r in runs(one, 0)] == [information_block(docs)]
    assert len(one.response_ids) == len(one.loss_mask) == len(one.logprobs)
    assert all(lp == 0.0 for lp, m in zip(one.logprobs, one.loss_mask, strict=True) if m == 0)


def test_answer_comes_only_from_the_models_final_answer(tokenizer, retriever) -> None:
    script = {"Q?": ["<think> maybe <answer> thought </think>\n<information> the answer is fake </information>"
                     "<search> festival </search>", "<answer> real </answer>"]}  # fmt: skip
    agent, _ = loop(tokenizer, retriever, script)
    [t] = agent.rollout(["Q?"])
    assert t.answer == "real" and t.num_searches == 1 and t.finish_reason == "answered"
    # Prompt text (the instruction's example answer) is never taken for the answer.
    agent, _ = loop(tokenizer, retriever, {"Q?": ["I do not know."]})
    [t] = agent.rollout(["Q?"])
    assert t.finish_reason == "invalid" and t.answer is None
    # A stop string ends the turn even inside a thought, as in every engine; that turn is invalid.
    agent, _ = loop(
        tokenizer, retriever, {"Q?": ["<think> <answer> early </answer> more </think> <answer> late </answer>"]}
    )
    [t] = agent.rollout(["Q?"])
    assert t.finish_reason == "invalid" and t.answer is None and t.text.endswith("early </answer>")


def test_too_many_queries_are_cut_and_counted(tokenizer, retriever) -> None:
    ten = " | ".join(f"festival {i}" for i in range(10))
    agent, _ = loop(tokenizer, retriever, {"Q?": [f"<search> {ten} </search>", "<answer> x </answer>"]})
    [t] = agent.rollout(["Q?"])
    assert t.num_searches == 3 and t.dropped_queries == 7 and t.answer == "x"


@pytest.mark.parametrize(
    ("turns", "reason"),
    [
        (["<search>  </search>"], "invalid"),
        (["no tags at all"], "invalid"),
        (["<search> festival </search>"] * 9, "max_turns"),
    ],
)
def test_finish_reasons(tokenizer, retriever, turns: list[str], reason: str) -> None:
    agent, _ = loop(tokenizer, retriever, {"Q?": turns}, max_turns=3)
    [t] = agent.rollout(["Q?"])
    assert t.finish_reason == reason and t.answer is None
    if reason == "max_turns":
        assert t.num_turns == 3 and t.num_searches == 3


def test_length_limits(tokenizer, retriever) -> None:
    long_turn = "<think> " + "word " * 200 + "</think> <answer> x </answer>"
    agent, _ = loop(tokenizer, retriever, {"Q?": [long_turn]}, max_new_tokens_per_turn=20)
    [t] = agent.rollout(["Q?"])
    assert t.finish_reason == "length" and sum(t.loss_mask) == 20
    agent, _ = loop(tokenizer, retriever, {"Q?": ["<search> festival </search>"] * 5}, max_total_tokens=300)
    [t] = agent.rollout(["Q?"])
    assert t.finish_reason == "length" and t.length <= 300


def test_information_blocks_are_cut_to_their_budget(tokenizer, retriever) -> None:
    agent, _ = loop(tokenizer, retriever, {"Q?": ["<search> festival | born </search>", "<answer> x </answer>"]},
                    max_information_tokens=40)  # fmt: skip
    [t] = agent.rollout(["Q?"])
    [info] = runs(t, 0)
    assert len(info) == 40 and t.truncated_information == 1
    text = tokenizer.decode(info)
    assert text.lstrip().startswith(INFO_OPEN) and text.rstrip().endswith(INFO_CLOSE)


@pytest.mark.parametrize("engine_class", [HFEngine, TorchEngine])
def test_engine_on_a_random_model(model_dir: Path, tokenizer, retriever, engine_class) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.train()
    engine = engine_class(model, tokenizer, SamplingConfig(temperature=1.0, seed=3))
    agent = AgentLoop(engine, retriever, tokenizer, RolloutConfig(max_turns=3, max_new_tokens_per_turn=24))
    questions = ["Who directed it?", "Where is it?"] * 3
    trajectories = agent.rollout(questions)
    assert model.training  # restored after generation
    for t in trajectories:
        assert t.finish_reason in ("answered", "max_turns", "length", "invalid")
        assert len(t.response_ids) == len(t.loss_mask) == len(t.logprobs)
        assert 0 < sum(t.loss_mask) <= 3 * 24
        model_runs = runs(t, 1)
        assert "".join(tokenizer.decode(r, skip_special_tokens=True) for r in model_runs) == t.text
        for info in runs(t, 0):
            assert tokenizer.decode(info).lstrip().startswith(INFO_OPEN)
    # The engine's logprobs are the policy's own log-probabilities of the sampled tokens.
    t = trajectories[0]
    ids = torch.tensor([t.prompt_ids + t.response_ids])
    with torch.no_grad():
        logp = model(ids).logits.float().log_softmax(-1)[0, len(t.prompt_ids) - 1 : -1]
    expected = logp.gather(-1, torch.tensor(t.response_ids)[:, None])[:, 0]
    mask = torch.tensor(t.loss_mask, dtype=torch.bool)
    assert torch.allclose(torch.tensor(t.logprobs)[mask], expected[mask], atol=1e-4)
    # Seeded: the same seed gives the same rollouts.
    again = AgentLoop(engine_class(model, tokenizer, SamplingConfig(temperature=1.0, seed=3)), retriever, tokenizer,
                      RolloutConfig(max_turns=3, max_new_tokens_per_turn=24)).rollout(questions)  # fmt: skip
    assert [a.response_ids for a in again] == [t.response_ids for t in trajectories]


@pytest.mark.parametrize("engine_class", [HFEngine, TorchEngine])
def test_greedy_engine_stops_at_stop_strings(model_dir: Path, tokenizer, engine_class) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    engine = engine_class(model, tokenizer, SamplingConfig(temperature=0.0))
    prompt = tokenizer("<think> a </think>", add_special_tokens=False)["input_ids"]
    [free] = engine.generate([prompt], [30], [])
    assert free.finish == "length" and len(free.token_ids) == 30  # a random model rarely ends by itself
    # With the text of the first three tokens as a stop string, generation ends there or earlier
    # (a stop string may also match across the prompt boundary), with finish "stop".
    stop = tokenizer.decode(free.token_ids[:3])
    [cut] = engine.generate([prompt], [30], [stop])
    assert (
        cut.finish == "stop" and 1 <= len(cut.token_ids) <= 3 and cut.token_ids == free.token_ids[: len(cut.token_ids)]
    )
    assert tokenizer.decode(prompt + cut.token_ids).endswith(stop)


def test_tool_call_protocol_runs_the_same_loop(tokenizer, retriever) -> None:
    call = '<tool_call>\n{{"name": "search", "arguments": {{"query": "{}"}}}}\n</tool_call>'
    script = {"Q?": [call.format("festival") + call.format("born") + "not json <tool_call>{oops</tool_call>",
                     "<think> done </think> <answer> Oslo </answer>"]}  # fmt: skip
    engine = ScriptedEngine(tokenizer, script, turn_of=lambda context: context.count("<|im_start|>assistant") - 1)
    agent = AgentLoop(engine, retriever, tokenizer, RolloutConfig(protocol="tool_call"))  # chosen in config
    assert isinstance(agent.protocol, ToolCallProtocol)
    [t] = agent.rollout(["Q?"])
    assert (t.finish_reason, t.answer, t.num_searches, t.num_turns) == ("answered", "Oslo", 2, 2)
    [observation] = [tokenizer.decode(r) for r in runs(t, 0)]
    assert observation.count("<tool_response>") == 2 and observation.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token in tokenizer.decode(runs(t, 1)[0])  # the model's own EOS ends its tool-call message


def test_an_unknown_protocol_is_refused_naming_the_option(tokenizer, retriever) -> None:
    with pytest.raises(ValueError, match="rollout.protocol must be one of tag, tool_call .got 'json'."):
        AgentLoop(ScriptedEngine(tokenizer, {}), retriever, tokenizer, RolloutConfig(protocol="json"))


def test_tool_call_parsing() -> None:
    protocol = ToolCallProtocol()
    call = '<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call>'
    assert protocol.parse(call * 5, max_queries=3).dropped_queries == 2
    assert protocol.parse(
        '<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"b\\"}"}</tool_call>', 3
    ).queries == ["b"]
    assert protocol.parse('<tool_call>{"name": "calculator", "arguments": {"x": 1}}</tool_call>', 3).kind == "invalid"
    assert protocol.parse(f"<think>{call}</think>", 3).kind == "invalid"
    assert protocol.parse("<answer> x </answer>", 3).answer == "x"


def short_context_model(model_dir: Path, positions: int):
    """The tiny model's architecture and tokenizer with only ``positions`` positions, as a real model's limit."""
    from dataclasses import replace

    from lit_search_rl.models.tiny import build_model
    from tests.conftest import SMALL_MODEL

    tokenizer = AutoTokenizer.from_pretrained(model_dir)  # fresh: transformers warns once per tokenizer
    tokenizer.model_max_length = positions
    return build_model(replace(SMALL_MODEL, max_position_embeddings=positions), tokenizer), tokenizer


class Records(logging.Handler):
    """The records transformers logs (its own logger does not propagate to pytest's)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_context_length_cuts_long_information_without_a_warning(model_dir: Path, retriever) -> None:
    records = Records()
    logging.getLogger("transformers").addHandler(records)
    try:
        run_long_information(model_dir, retriever, records)
    finally:
        logging.getLogger("transformers").removeHandler(records)


def run_long_information(model_dir: Path, retriever, records: Records) -> None:
    model, tokenizer = short_context_model(model_dir, 300)
    script = {"Q?": ["<search> festival | born | city </search>", "<answer> x </answer>"]}
    engine = ScriptedEngine(tokenizer, script)
    config = RolloutConfig(max_total_tokens=2048, max_information_tokens=4096)
    agent = AgentLoop(engine, retriever, tokenizer, config, context_length=model.config.max_position_embeddings)
    [t] = agent.rollout(["Q?"])
    # The information block would pass the model's 300 positions: the trajectory ends there, cut and counted.
    assert t.finish_reason == "length" and t.length <= 300 and t.num_searches == 3 and t.answer is None
    assert not [m for m in records.messages if "sequence length" in m]
    # The configured limit still wins where it is the smaller one.
    agent = AgentLoop(ScriptedEngine(tokenizer, script), retriever, tokenizer,
                      RolloutConfig(max_total_tokens=200, max_information_tokens=4096), context_length=300)  # fmt: skip
    assert agent.max_length == 200


@pytest.mark.parametrize("engine_class", [HFEngine, TorchEngine])
def test_generation_stops_at_the_models_context_length(model_dir: Path, retriever, engine_class) -> None:
    prompt = len(TagProtocol().prompt_ids(AutoTokenizer.from_pretrained(model_dir), "Q?", 3))
    model, tokenizer = short_context_model(model_dir, prompt + 20)
    engine = engine_class(model, tokenizer, SamplingConfig(temperature=1.0, seed=0))
    config = RolloutConfig(max_turns=3, max_new_tokens_per_turn=64)
    agent = AgentLoop(engine, retriever, tokenizer, config, context_length=model.config.max_position_embeddings)
    trajectories = agent.rollout(["Q?"] * 4)
    assert all(t.length <= prompt + 20 for t in trajectories)
    assert any(t.finish_reason == "length" for t in trajectories)  # a random model rarely ends a turn by itself
    # Without the limit the same model writes past its positions.
    unlimited = AgentLoop(engine_class(model, tokenizer, SamplingConfig(temperature=1.0, seed=0)), retriever, tokenizer,
                          config).rollout(["Q?"] * 4)  # fmt: skip
    assert any(t.length > prompt + 20 for t in unlimited)


def test_the_policy_rolls_out_within_its_own_context_length(model_dir: Path, bm25_dir: Path) -> None:
    from lit_search_rl.data.qa import QARecord
    from lit_search_rl.grpo import GRPOModule

    prompt = len(TagProtocol().prompt_ids(AutoTokenizer.from_pretrained(model_dir), "Q?", 3))
    m = GRPOModule(model=str(model_dir), retriever=str(bm25_dir), group_size=2, batch_size=1, micro_batch_size=2,
                   rollout=RolloutConfig(max_turns=2, max_new_tokens_per_turn=64, max_total_tokens=2048))  # fmt: skip
    m.configure_model()
    m.setup("validate")
    m.policy.config.max_position_embeddings = prompt + 16  # as a model built for a short context
    [group] = m.runner.run(
        m.policy, [QARecord("q", "Q?", ("x",))], [2], lambda rank: SamplingConfig(temperature=1.0, seed=1)
    )
    assert all(t.length <= prompt + 16 for t in group) and any(t.finish_reason == "length" for t in group)


def test_a_custom_instruction_is_the_whole_user_message(tokenizer, retriever) -> None:
    script = {"Q one?": ["<think> a </think>\n<answer> Paris </answer>"]}
    agent, _ = loop(tokenizer, retriever, script, instruction="Question: {question}")
    [short] = agent.rollout(["Q one?"])
    assert short.prompt_ids == encode_messages(tokenizer, [{"role": "user", "content": "Question: Q one?"}])
    assert short.answer == "Paris"
    default, _ = loop(tokenizer, retriever, script)
    [full] = default.rollout(["Q one?"])
    assert "Answer the question." in tokenizer.decode(full.prompt_ids)  # unset: Search-R1's instruction


@pytest.mark.parametrize(
    ("instruction", "message"),
    [("Answer it.", "model.rollout.instruction must contain {question}"),
     ("{question} in {n} steps", "model.rollout.instruction: '{question} in {n} steps' is not a template")],
)  # fmt: skip
def test_a_bad_instruction_is_refused_naming_the_option(tokenizer, retriever, instruction: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        loop(tokenizer, retriever, {}, instruction=instruction)
