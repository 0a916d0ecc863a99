"""The turn parser: model text is untrusted, so no text crashes it and only the model's own final blocks count."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lit_search_rl.rollout.actions import extract_answer, parse_action, visible_text
from lit_search_rl.rollout.tags import TAGS


def test_search_with_several_queries_and_a_cap() -> None:
    assert parse_action("<think> x </think>\n<search> a | b </search>").queries == ["a", "b"]
    many = parse_action("<search> " + " | ".join(f"q{i}" for i in range(10)) + " </search>", max_queries=3)
    assert many.kind == "search" and many.queries == ["q0", "q1", "q2"] and many.dropped_queries == 7


def test_answer_and_its_position() -> None:
    assert parse_action("<think> hm </think>\n<answer> Paris </answer>") == parse_action("<answer>Paris</answer>")
    assert parse_action("<answer> Paris </answer>").answer == "Paris"
    # The last complete block decides.
    assert parse_action("<answer> a </answer> <search> b </search>").kind == "search"


def test_blocks_inside_thoughts_or_model_written_information_do_not_count() -> None:
    assert parse_action("<think> <answer> no </answer> </think>").kind == "invalid"
    assert parse_action("<think> <search> no </search> </think>").kind == "invalid"
    assert parse_action("<think> unterminated <answer> no </answer>").kind == "invalid"
    fake = "<information>Doc 1 <answer> fake </answer></information>"
    assert parse_action(fake).kind == "invalid" and extract_answer(fake) is None
    assert extract_answer(f"{fake} <answer> mine </answer>") == "mine"


def test_invalid_turns() -> None:
    assert parse_action("").kind == "invalid"
    assert parse_action("<search>   </search>").reason == "empty <search>"
    assert parse_action("<search> | | </search>").kind == "invalid"
    assert parse_action("<search> unterminated").kind == "invalid"
    assert parse_action("</search> <search>").kind == "invalid"


def test_nested_openings_keep_the_innermost() -> None:
    assert parse_action("<search> a <search> b </search>").queries == ["b"]
    assert extract_answer("<answer> a <answer> b </answer>") == "b"


pieces = st.one_of(st.sampled_from(TAGS), st.sampled_from([" | ", "\n", " x ", "Paris"]), st.text(max_size=8))
fragments = st.lists(pieces, max_size=30).map("".join)


@settings(max_examples=400, deadline=None)
@given(fragments, st.integers(1, 5))
def test_any_text_parses_without_error_and_within_limits(text: str, max_queries: int) -> None:
    action = parse_action(text, max_queries)
    assert action.kind in ("search", "answer", "invalid")
    if action.kind == "search":
        assert 1 <= len(action.queries) <= max_queries and all(q and q == q.strip() for q in action.queries)
        assert all("|" not in q for q in action.queries)
    answer = extract_answer(text)
    if answer is not None:
        # An answer is always text the model wrote inside an <answer> block outside its thoughts.
        assert answer in visible_text(text) and "<answer>" in visible_text(text)
        assert "<think>" not in answer and "<information>" not in answer


@settings(max_examples=200, deadline=None)
@given(fragments, fragments)
def test_text_inside_a_thought_never_changes_the_action(before: str, thought: str) -> None:
    thought = thought.replace("</think>", "")
    assert parse_action(f"<think>{thought}</think>{before}") == parse_action(f"<think></think>{before}")
