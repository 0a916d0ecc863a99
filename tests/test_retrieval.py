"""Retrieval backends in process: corpus validation, BM25 and dense recall on the synthetic world, k handling."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from lit_search_rl.data.synthetic.expert import steps_from_rows
from lit_search_rl.io import read_jsonl
from lit_search_rl.retrieval.base import Document
from lit_search_rl.retrieval.cache import CachedRetriever
from lit_search_rl.retrieval.dense import DenseConfig
from lit_search_rl.retrieval.index import build_index, load_retriever
from lit_search_rl.rollout.tags import format_documents, truncate_text

WIKI = Path(__file__).resolve().parents[2] / "shared" / "data" / "wiki18-sample-1000.jsonl"


def expert_searches(world_dir: Path) -> list:
    """Every search of every expert plan in the SFT split of a world."""
    return [
        s
        for row in read_jsonl(world_dir / "sft.jsonl")
        for step in steps_from_rows(row["steps"])
        for s in step.searches
    ]


def recall_at(retriever, searches, k: int) -> float:
    results = retriever.search([s.query for s in searches], k)
    return sum(any(d.id in s.doc_ids for d in docs) for s, docs in zip(searches, results, strict=True)) / len(searches)


@pytest.mark.parametrize("index", ["bm25_dir", "dense_dir"])
def test_gold_passage_of_expert_queries_is_in_the_top_3(index: str, world_dir: Path, request) -> None:
    retriever = load_retriever(request.getfixturevalue(index))
    searches = expert_searches(world_dir)
    assert len(searches) > 100
    assert recall_at(retriever, searches, 3) >= 0.95


@pytest.mark.parametrize("index_type", ["hnsw", "ivfpq"])
def test_approximate_dense_indexes_find_a_passage_from_its_own_text(
    index_type: str, world_dir: Path, tmp_path: Path
) -> None:
    build_index(world_dir / "corpus.jsonl", tmp_path / "i", "dense", dense=DenseConfig(index_type=index_type, pq_m=8),
                progress=False)  # fmt: skip
    manifest = json.loads((tmp_path / "i" / "index.json").read_text())
    assert manifest["settings"]["index_type"] == index_type and manifest["kind"] == "dense"
    retriever = load_retriever(tmp_path / "i")
    rows = list(read_jsonl(world_dir / "corpus.jsonl"))[:40]
    results = retriever.search([r["contents"] for r in rows], 5)
    found = sum(any(d.id == r["id"] for d in docs) for r, docs in zip(rows, results, strict=True))
    assert found / len(rows) >= (0.95 if index_type == "hnsw" else 0.6)  # PQ compresses; HNSW is near exact


def test_results_are_documents_with_rows_and_sorted_scores(bm25_dir: Path) -> None:
    retriever = load_retriever(bm25_dir)
    [docs] = retriever.search(["festival"], 5)
    assert 0 < len(docs) <= 5
    assert all(isinstance(d, Document) and d.row["id"] == d.id and d.title in d.row["contents"] for d in docs)
    assert [d.score for d in docs] == sorted((d.score for d in docs), reverse=True)


def test_empty_queries_k_checks_and_cap(bm25_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    retriever = load_retriever(bm25_dir, max_k=4)
    assert retriever.search(["", "   ", "festival"], 3)[:2] == [[], []]
    assert retriever.search([], 3) == []
    assert retriever.search(["zzzqqq unknownword"], 3) == [[]]  # no shared term: nothing, not arbitrary rows
    for bad in (0, -2):
        with pytest.raises(ValueError, match="k must be at least 1"):
            retriever.search(["festival"], bad)
    with caplog.at_level(logging.WARNING):
        assert len(retriever.search(["festival"], 50)[0]) <= 4
        retriever.search(["festival"], 50)
    assert sum("cap" in r.message for r in caplog.records) == 1  # said once


@pytest.mark.parametrize(
    ("line", "message"),
    [('{"id": "2", "contents": "A\\nb"', "not valid JSON"), ('{"id": "2"}', "'contents'"), ("[1, 2]", "JSON object")],
)
def test_bad_corpus_line_is_named_and_leaves_no_index(tmp_path: Path, line: str, message: str) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "0", "contents": "A\\ntext"}\n{"id": "1", "contents": "B\\ntext"}\n' + line + "\n")
    with pytest.raises(ValueError, match=rf"corpus.jsonl:3: .*{message}"):
        build_index(corpus, tmp_path / "index", "bm25", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]


def test_a_truncated_corpus_line_keeps_the_position(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "0", "contents": "A\\ntext"}\n{"id": "1", "contents": "B\n')
    with pytest.raises(ValueError, match=r"corpus.jsonl:2: not valid JSON \(Invalid control character at column 27\)"):
        build_index(corpus, tmp_path / "index", "bm25", progress=False)


@pytest.mark.parametrize("text", ['{"0": {"title": "A", "text": "b"}}', '{\n  "0": {"title": "A", "text": "b"}\n}\n'])
def test_a_corpus_that_is_one_json_object_is_named_with_the_layouts_accepted(tmp_path: Path, text: str) -> None:
    corpus = tmp_path / "musique_corpus.json"
    corpus.write_text(text)
    with pytest.raises(
        ValueError, match=r"musique_corpus.json is one JSON object; a corpus is JSON lines of .*JSON array"
    ):
        build_index(corpus, tmp_path / "index", "bm25", progress=False)


def test_a_json_array_of_passages_is_a_corpus(tmp_path: Path) -> None:
    # HippoRAG's *_corpus.json: a JSON array of {"idx", "title", "text"}; FlashRAG rows in an array work too.
    passages = [
        {"idx": 5, "title": "Ann Lee", "text": "Ann Lee was born in Paris."},
        {"title": "Bo Kim", "text": "Bo Kim was born in Rome."},
        {"id": "x", "contents": "Cy\nCy sings."},
    ]
    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps(passages, indent=1))
    build_index(corpus, tmp_path / "index", "bm25", progress=False)
    bo, cy = load_retriever(tmp_path / "index").search(["where was Bo Kim born", "who sings"], 1)
    assert (bo[0].id, bo[0].title, bo[0].text) == ("1", "Bo Kim", "Bo Kim was born in Rome.")
    assert (cy[0].id, cy[0].title) == ("x", "Cy")


@pytest.mark.parametrize("text", ["", "\n\n", "[]"])
def test_an_empty_corpus_is_one_line_naming_the_file(tmp_path: Path, text: str) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(text)
    with pytest.raises(ValueError, match=rf"^--corpus {re.escape(str(corpus))} has no passages"):
        build_index(corpus, tmp_path / "index", "bm25", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]


def test_wiki18_titles_lose_their_quotes(tmp_path: Path) -> None:
    if not WIKI.is_file():
        pytest.skip("the wiki-18 sample is not present")
    manifest = build_index(WIKI, tmp_path / "wiki", "bm25", progress=False)
    assert manifest["num_docs"] == 1000
    [docs] = load_retriever(tmp_path / "wiki").search(["Evan Morris lobbyist Genentech"], 3)
    assert docs[0].title == "Evan Morris" and docs[0].row["contents"].startswith('"Evan Morris"\n')


def test_cache_answers_repeats_without_the_backend(bm25_dir: Path) -> None:
    inner = load_retriever(bm25_dir)
    calls = []
    original = inner._search
    inner._search = lambda queries, k: calls.append(list(queries)) or original(queries, k)
    cached = CachedRetriever(inner, max_entries=2)
    first = cached.search(["festival", "festival", "born"], 3)
    assert calls == [["festival", "born"]] and first[0] == first[1]
    assert cached.search(["born", "festival"], 3) == [first[2], first[0]] and len(calls) == 1
    cached.search(["company"], 3)  # evicts the least recently used ("born")
    cached.search(["born"], 3)
    assert calls[-1] == ["born"] and cached.hits == 3 and cached.misses == 4


def test_information_text_truncates_per_document() -> None:
    docs = [Document("1", "Alpha", "one two three four five six seven"), Document("2", "Beta", "short")]
    assert format_documents(docs) == "Doc 1(Title: Alpha) one two three four five six seven\nDoc 2(Title: Beta) short\n"
    assert format_documents(docs, max_chars=16) == "Doc 1(Title: Alpha) one two ...\nDoc 2(Title: Beta) short\n"
    assert len(truncate_text("x" * 50, 10)) <= 10
