"""The synthetic world: determinism, splits, question families, and reachability of every answer."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from lit_search_rl.data.synthetic.expert import replay
from lit_search_rl.data.synthetic.questions import FAMILIES, relation_paths
from lit_search_rl.data.synthetic.schema import RELATIONS, YEAR, longest_chain
from lit_search_rl.data.synthetic.world import WorldConfig, generate_world, write_world
from lit_search_rl.io import read_jsonl

from .conftest import SMALL_WORLD


@pytest.fixture(scope="module")
def default_world():
    return generate_world(WorldConfig())


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    write_world(generate_world(SMALL_WORLD), tmp_path / "a")
    write_world(generate_world(SMALL_WORLD), tmp_path / "b")
    write_world(generate_world(dataclasses.replace(SMALL_WORLD, seed=8)), tmp_path / "c")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 3 + 2 + 2 * len(FAMILIES)  # world.json, corpus, entities, sft, train, val/*, test/*
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / "corpus.jsonl").read_bytes() != (tmp_path / "c" / "corpus.jsonl").read_bytes()


def test_every_expert_plan_reaches_the_gold_answer(default_world) -> None:
    contents = {p.id: p.contents for p in default_world.corpus.passages}
    total = 0
    for questions in default_world.splits.values():
        for q in questions:
            assert replay(q.question, q.rule, q.steps, contents) in q.golden_answers, q.question
            total += 1
    assert total == 1500 + 1500 + 3 * (50 + 100)


def test_replay_rejects_a_plan_that_uses_an_unread_name(default_world) -> None:
    contents = {p.id: p.contents for p in default_world.corpus.passages}
    q = next(q for q in default_world.splits["train"] if q.family == "chain" and q.hops >= 2)
    # Skip the first search: the second query is about a name only the first passage tells.
    with pytest.raises(ValueError, match="not known yet"):
        replay(q.question, q.rule, q.steps[1:], contents)
    # A plan whose passage does not state what it claims to learn is caught as well.
    step = q.steps[0]
    wrong = dataclasses.replace(step, searches=[dataclasses.replace(step.searches[0], learns="Nowhere")])
    with pytest.raises(ValueError, match="does not state"):
        replay(q.question, q.rule, [wrong, *q.steps[1:]], contents)


def test_splits_share_no_question_and_have_the_asked_sizes(default_world) -> None:
    seen: dict[str, str] = {}
    for split, questions in default_world.splits.items():
        for q in questions:
            assert q.question not in seen, f"{q.question!r} is in {seen.get(q.question)} and {split}"
            seen[q.question] = split
    sizes = {split: len(qs) for split, qs in default_world.splits.items()}
    assert sizes["sft"] == 1500 and sizes["train"] == 1500
    for family in FAMILIES:
        assert sizes[f"val/{family}"] == 50 and sizes[f"test/{family}"] == 100
        assert all(q.family == family for q in default_world.splits[f"test/{family}"])


def test_families_have_their_shape(default_world) -> None:
    questions = [q for qs in default_world.splits.values() for q in qs]
    chain = [q for q in questions if q.family == "chain"]
    iterative = [q for q in questions if q.family == "iterative"]
    comparison = [q for q in questions if q.family == "comparison"]
    assert {q.hops for q in chain} == {1, 2, 3, 4}
    assert {q.hops for q in iterative} == {2, 3, 4}
    assert {q.hops for q in comparison} == {2}
    for q in chain + iterative:
        searches = [s for step in q.steps for s in step.searches]
        assert len(searches) == q.hops and all(len(step.searches) <= 1 for step in q.steps)
        # No answer is given away by the question.
        assert q.golden_answers[0] not in q.question
    for q in iterative:
        # The first search is by description: the entity it finds is not named in the question.
        assert q.steps[0].searches[0].learns not in q.question
    for q in comparison:
        assert len(q.steps[0].searches) == 2  # both looked up in one turn
    rules = {q.rule for q in comparison}
    assert rules == {"earlier", "later", "same"}
    yes_no = [q.golden_answers[0] for q in comparison if q.rule == "same"]
    assert 0.3 < yes_no.count("yes") / len(yes_no) < 0.7


def test_names_are_unique_words(default_world) -> None:
    names = [e.name for e in default_world.entities.by_id.values()]
    assert len(set(names)) == len(names)
    words = [w for e in default_world.entities.by_id.values() if e.kind != "company" and e.kind != "band"
             for w in e.name.split()]  # fmt: skip
    assert len(set(words)) == len(words)


def test_files_are_flashrag_rows_and_corpus_rows(world_dir: Path) -> None:
    manifest = json.loads((world_dir / "world.json").read_text())
    for split, name in manifest["files"].items():
        rows = list(read_jsonl(world_dir / name))
        assert len(rows) == manifest["counts"].get(split, len(rows))
        if split == "corpus":
            for row in rows:
                assert set(row) == {"id", "contents"} and re.fullmatch(r"\d+", row["id"])
                title, text = row["contents"].split("\n", 1)
                assert title and text
        elif split != "entities":
            for row in rows:
                assert {"id", "question", "golden_answers", "family", "hops"} <= set(row)
                assert isinstance(row["golden_answers"], list) and row["golden_answers"]
                assert ("steps" in row) == (split == "sft")


def test_schema_chains() -> None:
    assert longest_chain() == 5
    for length in range(1, 6):
        for path in relation_paths(length):
            assert len(path) == length
            for a, b in zip(path, path[1:], strict=False):
                assert RELATIONS[a].target == RELATIONS[b].source and RELATIONS[a].target != YEAR


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("num_people", 0, "--num_people"),
        ("num_countries", 0, "--num_countries"),
        ("num_cities", 2, "--num_cities"),
        ("max_hops", 9, "--max_hops"),
        ("max_hops", 1, "--max_hops"),
        ("num_train", 10**5, "--num_train"),
    ],
)
def test_impossible_settings_name_the_option(field: str, value: int, needle: str) -> None:
    config = dataclasses.replace(SMALL_WORLD, **{field: value})
    with pytest.raises(ValueError, match=re.escape(needle)):
        generate_world(config)


def test_bm25_ranks_the_experts_passage_first_for_nearly_every_query(default_world) -> None:
    # A query "<name> <keyword>" must find the passage that states the fact before passages that only share the
    # keyword (city passages say "country", so "<city> country" does not rank the country passages first).
    from lit_search_rl.retrieval.bm25 import InMemoryBM25

    searches = [s for q in default_world.splits["sft"] for step in q.steps for s in step.searches]
    top = InMemoryBM25([p.to_row() for p in default_world.corpus.passages]).search([s.query for s in searches], 1)
    hits = sum(docs[0].id in s.doc_ids for s, docs in zip(searches, top, strict=True))
    assert hits / len(searches) >= 0.99, f"recall@1 {hits / len(searches):.3f}"
